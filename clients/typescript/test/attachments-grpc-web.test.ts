// The attachments suite (test/attachments-suite.ts) over gRPC-Web (side B: the browser entry point).
import { defineAttachmentsSuite } from "./attachments-suite.js";

defineAttachmentsSuite("grpc-web");
