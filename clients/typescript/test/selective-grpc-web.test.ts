// The selective-sync suite (test/selective-suite.ts) over gRPC-Web (HTTP/1.1).
import { defineSelectiveSuite } from "./selective-suite.js";

defineSelectiveSuite("grpc-web");
