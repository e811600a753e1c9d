// The conflict-resolution suite (test/resolution-suite.ts) over native gRPC (HTTP/2).
import { defineResolutionSuite } from "./resolution-suite.js";

defineResolutionSuite("grpc");
