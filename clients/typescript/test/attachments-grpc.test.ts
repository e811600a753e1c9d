// The attachments suite (test/attachments-suite.ts) over native gRPC (HTTP/2).
import { defineAttachmentsSuite } from "./attachments-suite.js";

defineAttachmentsSuite("grpc");
