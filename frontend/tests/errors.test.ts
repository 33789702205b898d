import { describe, expect, it } from "vitest";
import { classifyServerError, contextOverflowMessage, friendlyMessage } from "../src/errors.ts";

describe("classifyServerError", () => {
  const cases: [number | undefined, Record<string, unknown>, boolean, string][] = [
    [401, {}, false, "session_expired"],
    [429, {}, false, "rate_limited"],
    [503, {}, false, "model_loading"],
    [400, {}, false, "bad_request"],
    [413, {}, false, "bad_request"],
    [500, {}, false, "server_error"],
    [502, {}, false, "server_error"],
    [400, {}, true, "vision_unsupported"],
    [500, {}, true, "vision_unsupported"],
    [401, {}, true, "session_expired"],
    [undefined, { code: 503 }, false, "model_loading"],
    [undefined, { code: "weird" }, false, "server_error"],
    [400, { type: "exceed_context_size_error" }, true, "context_overflow"],
  ];
  for (const [status, error, hasImage, code] of cases) {
    it(`maps ${status ?? "a frame"} ${JSON.stringify(error)}${hasImage ? " with an image" : ""} to ${code}`, () => {
      expect(classifyServerError(status, error, hasImage).code).toBe(code);
    });
  }

  it("never returns the server's message", () => {
    const { message } = classifyServerError(500, { message: "/home/me/model.gguf exploded" }, false);
    expect(message).toBe(friendlyMessage("server_error"));
  });
});

describe("contextOverflowMessage", () => {
  it("states both counts when they are positive integers", () => {
    expect(contextOverflowMessage({ n_prompt_tokens: 4097, n_ctx: 4096 })).toBe(
      "Message too long: 4,097 tokens exceeds the 4,096-token context window. Shorten it or start a new chat.",
    );
  });

  it("falls back to the plain sentence when a count is missing or odd", () => {
    const plain = "Message too long for the model's context window. Shorten it or start a new chat.";
    expect(contextOverflowMessage({})).toBe(plain);
    expect(contextOverflowMessage({ n_prompt_tokens: 1.5, n_ctx: 10 })).toBe(plain);
    expect(contextOverflowMessage({ n_prompt_tokens: "9000", n_ctx: 10 } as never)).toBe(plain);
    expect(contextOverflowMessage({ n_prompt_tokens: -1, n_ctx: 10 })).toBe(plain);
  });
});
