// The interop suite over native gRPC (HTTP/2).
import { defineInteropSuite } from "./suite.js";

defineInteropSuite("grpc");
