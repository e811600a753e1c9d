// The interop suite over gRPC-Web (HTTP/1.1), as browsers use it.
import { defineInteropSuite } from "./suite.js";

defineInteropSuite("grpc-web");
