// The client-behaviour suite (test/client-suite.ts) over gRPC-Web (HTTP/1.1; the second replica uses the browser entry point).
import { defineClientSuite } from "./client-suite.js";

defineClientSuite("grpc-web");
