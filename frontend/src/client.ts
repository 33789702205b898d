/**
 * `streamChat`: negotiate a token, stream straight from the lane, shape, fall back, resume, run tools.
 *
 * The only door to the network is `options.fetch`, so every path here (fallback on each failure
 * kind, resume, abort, the tool loop) runs in unit tests against a scripted fake. The rule that
 * decides most branches is the design's point of no return: before the first emitted text or
 * reasoning delta any failure falls back silently, once; after it, a resumable stream resumes from
 * its byte offset and any other stream fails visibly. Text is never shown twice.
 */
import { classified } from "./errors.ts";
import type { ToolCall, UIEvent } from "./shape.ts";
import type { ChatMessage, ChatRequest, StreamChatOptions } from "./chat-types.ts";
import { ChatRun, DEFAULTS } from "./chat-run.ts";
import { round } from "./rounds.ts";
import { errorEvent } from "./stream-body.ts";

export type { ChatMessage, ChatRequest, FetchLike, StreamChatOptions, ToolContext, ToolExecutor } from "./chat-types.ts";

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
 * Stream one chat reply as UI events, running tool rounds until the model answers in text.
 * Ends with exactly one of `finish`, `abort` or a final `error`.
 */
export async function* streamChat(request: ChatRequest, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  const run = new ChatRun(options, request);
  const messages: ChatMessage[] = [...request.messages];
  const maxRounds = options.maxToolRounds ?? DEFAULTS.maxToolRounds;
  for (let rounds = 0; ; rounds++) {
    const body: Record<string, unknown> = {
      ...request,
      messages,
      stream: true,
      return_progress: true,
      stream_options: { include_usage: true },
    };
    const outcome = yield* round(run, body);
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
    messages.push({
      role: "assistant",
      content: outcome.text === "" ? null : outcome.text,
      tool_calls: outcome.calls.map((call) => ({
        id: call.id,
        type: "function",
        function: { name: call.name, arguments: call.raw },
      })),
    });
    for (const call of outcome.calls) {
      yield { type: "tool_start", tool_name: call.name, tool_call_id: call.id, arguments: call.arguments };
      yield { type: "tool_status", content: `Calling: ${call.name}` };
      const result = await runTool(run, call);
      if (run.signal.aborted) {
        yield { type: "abort" };
        return;
      }
      yield { type: "tool_end", tool_name: call.name, tool_call_id: call.id, result };
      messages.push({ role: "tool", tool_call_id: call.id, content: toolResultContent(result) });
    }
    yield { type: "tool_status", content: "" };
  }
}
