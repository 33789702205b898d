/**
 * `streamChat` (and `streamResponses`, `streamMessages`, the same on the Responses and Messages routes):
 * negotiate a token, stream straight from the lane, shape, fall back, resume, run tools.
 *
 * The only door to the network is `options.fetch`, so every path here (fallback on each failure
 * kind, resume, abort, the tool loop) runs in unit tests against a scripted fake. The rule that
 * decides most branches is the design's point of no return: before the first emitted text or
 * reasoning delta any failure falls back silently, once; after it, a resumable stream resumes from
 * its byte offset and any other stream fails visibly. Text is never shown twice.
 */
import { classified } from "./errors.ts";
import type { ToolCall, UIEvent } from "./shape.ts";
import type { ChatRequest, MessagesRequest, ResponsesRequest, StreamChatOptions } from "./chat-types.ts";
import { ChatRun, DEFAULTS } from "./chat-run.ts";
import { round } from "./rounds.ts";
import { abortStream, errorEvent, openResume, streamBody } from "./stream-body.ts";
import { CHAT, MESSAGES, RESPONSES, type RouteFormat, type ToolRound } from "./route-formats.ts";

export type {
  ChatMessage,
  ChatRequest,
  FetchLike,
  MessagesRequest,
  ResponsesRequest,
  StreamChatOptions,
  ToolContext,
  ToolExecutor,
} from "./chat-types.ts";

function toolResultContent(result: unknown): string {
  if (typeof result === "string") return result;
  try {
    return JSON.stringify(result ?? null);
  } catch {
    return JSON.stringify({ error: "unserialisable_result" });
  }
}

async function runTool(run: ChatRun, call: ToolCall): Promise<unknown> {
  if (!call.valid) return { error: "invalid_arguments", message: "The arguments were not valid JSON." };
  const executor = run.options.tools?.[call.name];
  if (executor === undefined) return { error: "unknown_tool", message: `No tool is named ${call.name}.` };
  try {
    return await executor(call.arguments, { signal: run.signal });
  } catch {
    return { error: "tool_failed", message: `The tool ${call.name} failed.` };
  }
}

/**
 * Stream one reply in a route's format as UI events, running tool rounds until the model answers in
 * text. Ends with exactly one of `finish`, `abort` or a final `error`.
 */
async function* streamRoute<R>(format: RouteFormat<R>, request: R, options: StreamChatOptions): AsyncGenerator<UIEvent> {
  const run = new ChatRun(options, format.hasImage(request), format.route);
  const maxRounds = options.maxToolRounds ?? DEFAULTS.maxToolRounds;
  let current = request;
  for (let rounds = 0; ; rounds++) {
    const outcome = yield* round(run, format.body(current));
    if (outcome.kind === "stopped") return;
    if (outcome.calls.length === 0) {
      yield { type: "finish", finish_reason: outcome.finishReason, lane: outcome.lane };
      return;
    }
    if (rounds >= maxRounds) {
      yield errorEvent(classified("tool_rounds_exceeded"), "mid-stream");
      yield { type: "finish", finish_reason: outcome.finishReason, lane: outcome.lane };
      return;
    }
    const results: ToolRound[] = [];
    for (const call of outcome.calls) {
      yield { type: "tool_start", tool_name: call.name, tool_call_id: call.id, arguments: call.arguments };
      yield { type: "tool_status", content: `Calling: ${call.name}` };
      const result = await runTool(run, call);
      if (run.signal.aborted) {
        yield { type: "abort" };
        return;
      }
      yield { type: "tool_end", tool_name: call.name, tool_call_id: call.id, result };
      results.push({ call, result: toolResultContent(result) });
    }
    current = format.withToolResults(current, outcome.text, results);
    yield { type: "tool_status", content: "" };
  }
}

/**
 * Pick up a resumable chat stream this user opened, by its conversation id (`onConversation`), from
 * its first byte: the reply so far, then the rest as llama-server writes it (a page reloaded while a
 * reply streamed). Ends with `finish` (lane `resumed`), `abort` (Stop cancels the stream), or the
 * error `stream_lost` when the stream is gone. A tool call it ends in is not run.
 */
export async function* resumeChat(conversationId: string, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  const run = new ChatRun(options, false, "chat");
  const opened = await openResume(run, conversationId, 0);
  if (run.signal.aborted) {
    opened?.request.cancel();
    yield* abortStream(run, { url: "", token: "", conversationId });
    return;
  }
  if (opened === null) {
    yield errorEvent(classified("stream_lost"), "pre-output");
    return;
  }
  const outcome = yield* streamBody(run, opened, { url: "", token: "", conversationId }, "resumed");
  if (outcome.kind === "end") yield { type: "finish", finish_reason: outcome.finishReason, lane: outcome.lane };
  else if (outcome.kind === "fallback") yield errorEvent(classified("stream_lost"), "mid-stream");
}

/** Stream one chat completion (`POST /v1/chat/completions`) as UI events. */
export function streamChat(request: ChatRequest, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  return streamRoute(CHAT, request, options);
}

/** Stream one OpenAI Responses reply (`POST /v1/responses`) as the same UI events as chat. */
export function streamResponses(request: ResponsesRequest, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  return streamRoute(RESPONSES, request, options);
}

/** Stream one Anthropic Messages reply (`POST /v1/messages`) as the same UI events as chat. */
export function streamMessages(request: MessagesRequest, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  return streamRoute(MESSAGES, request, options);
}
