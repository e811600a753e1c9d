// The conflict-resolution suite (test/resolution-suite.ts) over gRPC-Web (HTTP/1.1).
import { defineResolutionSuite } from "./resolution-suite.js";

defineResolutionSuite("grpc-web");
