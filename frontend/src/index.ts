/** The browser client library: what an app imports to stream chat through llama-direct. */
export {
  type ChatMessage,
  type ChatRequest,
  type FetchLike,
  type MessagesRequest,
  type ResponsesRequest,
  resumeChat,
  type StreamChatOptions,
  streamChat,
  streamMessages,
  streamResponses,
  type ToolContext,
  type ToolExecutor,
} from "./client.ts";
export { type DirectFetch, type DirectFetchOptions, directFetch } from "./direct_fetch.ts";
export { type ErrorCode, friendlyMessage } from "./errors.ts";
export {
  type Lane,
  type Phase,
  type ShapedEvent,
  type ShaperOptions,
  StreamShaper,
  shapeItems,
  type ToolCall,
  toFlatText,
  type UIEvent,
} from "./shape.ts";
export { createShaper, type Shaper, type StreamFormat } from "./shape-format.ts";
export { createSSEDecoder, interpretEvent, parseErrorBody, type SSEDecoder, type SSEEvent, type ServerError, type StreamItem } from "./sse.ts";
