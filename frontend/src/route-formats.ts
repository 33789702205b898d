/**
 * The request side of each lane route that streams: how a round's body is made from the caller's
 * request, and how the model's tool calls and their results are written back into it for the next
 * round, in the route's own format (chat `tool_calls` and `tool` messages, Responses `function_call`
 * and `function_call_output` items, Messages `tool_use` and `tool_result` blocks). The stream side is
 * `shape-format.ts`. Pure.
 */
import type { ChatMessage, ChatRequest, MessagesRequest, ResponsesRequest } from "./chat-types.ts";
import { isRecord, type ToolCall } from "./shape.ts";
import type { StreamFormat } from "./shape-format.ts";

/** One tool call of a round with its result, already a string (`client.ts` serialises it). */
export interface ToolRound {
  call: ToolCall;
  result: string;
}

export interface RouteFormat<R> {
  /** The lane route's registry name (`lanes.ts`), which is also its stream format. */
  route: StreamFormat;
  /** One round's body: the request, streaming, with what else the route takes for it. */
  body(request: R): Record<string, unknown>;
  /** The next round's request: the model's text and tool calls, then each call's result. */
  withToolResults(request: R, text: string, rounds: ToolRound[]): R;
  /** Whether the request carries an image: an in-stream refusal then says the model cannot read it. */
  hasImage(request: R): boolean;
}

const IMAGE_PARTS = new Set(["image_url", "input_image", "image"]);

function hasImagePart(contents: unknown[]): boolean {
  return contents.some(
    (content) => Array.isArray(content) && content.some((part: unknown) => isRecord(part) && IMAGE_PARTS.has(String(part.type))),
  );
}

export const CHAT: RouteFormat<ChatRequest> = {
  route: "chat",
  body: (request) => ({ ...request, stream: true, return_progress: true, stream_options: { include_usage: true } }),
  withToolResults: (request, text, rounds) => ({
    ...request,
    messages: [
      ...request.messages,
      {
        role: "assistant",
        content: text === "" ? null : text,
        tool_calls: rounds.map(({ call }) => ({ id: call.id, type: "function", function: { name: call.name, arguments: call.raw } })),
      },
      ...rounds.map(({ call, result }): ChatMessage => ({ role: "tool", tool_call_id: call.id, content: result })),
    ],
  }),
  hasImage: (request) => hasImagePart(request.messages.map((message) => message.content)),
};

export const RESPONSES: RouteFormat<ResponsesRequest> = {
  route: "responses",
  body: (request) => ({ ...request, stream: true, return_progress: true }),
  withToolResults: (request, text, rounds) => {
    const input: Record<string, unknown>[] = typeof request.input === "string" ? [{ role: "user", content: request.input }] : [...request.input];
    if (text !== "") input.push({ type: "message", role: "assistant", content: [{ type: "output_text", text }] });
    for (const { call } of rounds) input.push({ type: "function_call", call_id: call.id, name: call.name, arguments: call.raw });
    for (const { call, result } of rounds) input.push({ type: "function_call_output", call_id: call.id, output: result });
    return { ...request, input };
  },
  hasImage: (request) =>
    typeof request.input !== "string" && hasImagePart(request.input.map((item) => (isRecord(item) ? item.content : undefined))),
};

export const MESSAGES: RouteFormat<MessagesRequest> = {
  route: "messages",
  body: (request) => ({ ...request, stream: true }),
  withToolResults: (request, text, rounds) => {
    const said: Record<string, unknown>[] = text === "" ? [] : [{ type: "text", text }];
    const uses = rounds.map(({ call }) => ({
      type: "tool_use",
      id: call.id,
      name: call.name,
      input: isRecord(call.arguments) ? call.arguments : {},
    }));
    const results = rounds.map(({ call, result }) => ({ type: "tool_result", tool_use_id: call.id, content: result }));
    return {
      ...request,
      messages: [...request.messages, { role: "assistant", content: [...said, ...uses] }, { role: "user", content: results }],
    };
  },
  hasImage: (request) => hasImagePart(request.messages.map((message) => message.content)),
};
