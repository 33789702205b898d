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

describe("classifyServerError reads the refusal's code first", () => {
  const cases: [number | undefined, Record<string, unknown>, boolean, string][] = [
    [401, { reason: "token_expired", code: 401 }, false, "session_expired"],
    [401, { reason: "login_required", code: 401 }, false, "session_expired"],
    [400, { reason: "vision_not_supported", code: 400 }, true, "vision_unsupported"],
    [413, { reason: "image_too_large", code: 413 }, true, "image_rejected"],
    [400, { reason: "image_too_many_pixels", code: 400 }, true, "image_rejected"],
    [400, { reason: "bad_messages", code: 400 }, true, "bad_request"],
    [400, { reason: "length_over_cap", code: 400 }, false, "bad_request"],
    [429, { reason: "rate_limited", code: 429 }, false, "rate_limited"],
    [429, { reason: "too_many_streams", code: 429 }, false, "too_many_streams"],
    [429, { reason: "budget_exhausted", code: 429 }, false, "budget_exhausted"],
    [400, { reason: "prompt_too_large", code: 400 }, false, "context_overflow"],
    [502, { reason: "upstream_unavailable", code: 502 }, false, "server_error"],
    [502, { reason: "stream_lost", code: 502 }, false, "stream_lost"],
    [503, { reason: "gate_unavailable", code: 503 }, false, "model_loading"],
    [undefined, { reason: "token_spent", code: 401 }, false, "session_expired"],
    [503, { type: "unavailable_error", code: 503 }, false, "model_loading"],
    [500, { type: "server_error", code: 500 }, true, "vision_unsupported"],
    [500, { type: "server_error", code: 500 }, false, "server_error"],
  ];
  for (const [status, error, hasImage, code] of cases) {
    it(`maps ${JSON.stringify(error)}${hasImage ? " with an image" : ""} to ${code}`, () => {
      expect(classifyServerError(status, error, hasImage).code).toBe(code);
    });
  }

  it("an image request refused for its text is not blamed on the image", () => {
    expect(classifyServerError(400, { reason: "field_not_allowed" }, true).code).toBe("bad_request");
  });
});

describe("classifyServerError and odd codes", () => {
  it("a code named like an object's own property is just unknown", () => {
    expect(classifyServerError(400, { reason: "constructor" }, false).code).toBe("bad_request");
    expect(classifyServerError(403, { reason: "__proto__" }, false).code).toBe("server_error");
    expect(classifyServerError(500, { type: "toString" }, false).code).toBe("server_error");
  });
});
