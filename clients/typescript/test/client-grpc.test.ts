// The client-behaviour suite (test/client-suite.ts) over native gRPC (HTTP/2).
import { defineClientSuite } from "./client-suite.js";

defineClientSuite("grpc");
