// The selective-sync suite (test/selective-suite.ts) over native gRPC (HTTP/2).
import { defineSelectiveSuite } from "./selective-suite.js";

defineSelectiveSuite("grpc");
