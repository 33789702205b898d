/** The browser client: negotiation and the lane, the silent fallback, and the errors it shows. */
import { describe, expect, it } from "vitest";
import { type ChatRequest, type StreamChatOptions, streamChat } from "../src/client.ts";
import { toFlatText } from "../src/shape.ts";
import { chunks, errors, grant, LANE, last, PLAIN, REQUEST, run, server, TEXT_PLAIN } from "./client_harness.ts";
import { collect, hang, json, networkError, sse } from "./fake.ts";
import { encode, fixture } from "./helpers.ts";

describe("the direct lane", () => {
  it("negotiates with the session cookie, then streams from the lane with the token", async () => {
    const fake = server({});
    const events = await run(fake);
    expect(toFlatText(events)).toBe(TEXT_PLAIN);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
    expect(events).toContainEqual({ type: "usage", prompt_tokens: 44, completion_tokens: 23 });
    expect(events.find((e) => e.type === "timings")).toMatchObject({ predicted_per_second: 137.9716907176409 });

    const [negotiation, direct] = fake.calls;
    expect(fake.calls).toHaveLength(2);
    expect(negotiation).toMatchObject({ url: "direct-stream", method: "POST", credentials: "same-origin" });
    expect(negotiation?.body).toEqual({ max_tokens: 48 });
    expect(direct).toMatchObject({ url: `${LANE}/v1/chat/completions`, method: "POST", credentials: "omit" });
    expect(direct?.headers.authorization).toBe("Bearer tok-chat");
    expect(direct?.headers["x-conversation-id"]).toBeUndefined();
    expect(direct?.body).toEqual({
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 48,
      stream: true,
      return_progress: true,
      stream_options: { include_usage: true },
    });
  });

  it("asks for a resumable stream and sends X-Conversation-Id only when the answer carries one", async () => {
    const fake = server({ negotiate: () => json(grant({ conversation_id: "conv-7" })) });
    await run(fake, { resumable: true, maxTokens: 64 });
    expect(fake.calls[0]?.body).toEqual({ max_tokens: 64, resumable: true });
    expect(fake.calls[1]?.headers["x-conversation-id"]).toBe("conv-7");
  });

  it("strips a trailing slash from the lane url", async () => {
    const fake = server({ negotiate: () => json(grant({ url: `${LANE}/` })) });
    await run(fake);
    expect(fake.calls[1]?.url).toBe(`${LANE}/v1/chat/completions`);
  });

  it("shows prompt progress before the first token", async () => {
    const events = await run(server({}));
    expect(events.slice(0, 2).map((e) => e.type)).toEqual(["progress", "progress"]);
  });
});

describe("silent fallback before the first delta", () => {
  const failures: [string, Partial<Parameters<typeof server>[0]>, StreamChatOptions?][] = [
    ["the negotiation answers unsupported", { negotiate: () => json({ supported: false, reason: "disabled", fallback_url: "/app/v1/chat/completions" }) }],
    ["the negotiation is unreachable", { negotiate: () => networkError() }],
    ["the negotiation answers 500", { negotiate: () => json({}, 500) }],
    ["the negotiation answers something that is not JSON", { negotiate: () => new Response("<html>", { status: 200 }) }],
    ["the lane answers 401", { lane: () => json({ error: { code: 401, message: "token expired" } }, 401) }],
    ["the lane answers 403", { lane: () => json({ error: { code: 403, message: "origin" } }, 403) }],
    ["the lane answers 404", { lane: () => json({ error: { code: 404 } }, 404) }],
    ["the lane answers 500", { lane: () => json({ error: { code: 500 } }, 500) }],
    ["the lane answers 502", { lane: () => new Response("bad gateway", { status: 502 }) }],
    ["the lane is unreachable", { lane: () => networkError() }],
    ["the lane's head does not arrive in time", { lane: (c) => hang(c) }, { headTimeoutMs: 20 }],
    ["the lane answers 200 with a wrong content type", { lane: () => new Response("{}", { status: 200, headers: { "Content-Type": "application/json" } }) }],
    ["the lane breaks before any token", { lane: (c) => sse(c, [encode('data: {"choices":[],"prompt_progress":{"total":5,"processed":0}}\n\n')], "error") }],
    ["the lane's body ends before any token", { lane: (c) => sse(c, [encode('data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n')], "close") }],
    ["the lane sends a server error frame before any token", { lane: (c) => sse(c, [encode('data: {"error":{"code":500,"type":"server_error","message":"x"}}\n\n')]) }],
  ];

  for (const [label, routes, options] of failures) {
    it(`falls back when ${label}`, async () => {
      const fake = server(routes);
      const events = await run(fake, options);
      expect(errors(events)).toEqual([]);
      expect(toFlatText(events)).toBe(TEXT_PLAIN);
      expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "fallback" });
      const fallback = fake.calls.filter((c) => c.url.endsWith("v1/chat/completions") && !c.url.startsWith(LANE));
      expect(fallback).toHaveLength(1);
      expect(fallback[0]?.credentials).toBe("same-origin");
      expect(fallback[0]?.headers.authorization).toBeUndefined();
      // The grant the lane could not use goes to the baseline, which serves under it; none when there was none.
      const tried = fake.to(`${LANE}/v1/chat/completions`).length > 0;
      expect(fallback[0]?.headers["x-unused-grant"]).toBe(tried ? "tok-chat" : undefined);
      expect(fallback[0]?.body).toEqual(fake.to(`${LANE}/v1/chat/completions`)[0]?.body ?? fallback[0]?.body);
      for (const direct of fake.to(`${LANE}/v1/chat/completions`)) expect(direct.signal?.aborted).toBe(true);
    });
  }

  it("uses the negotiation's fallback_url, else the relative default", async () => {
    const named = server({ negotiate: () => json({ supported: false, reason: "gate_down", fallback_url: "/app/v1/chat/completions" }) });
    await run(named);
    expect(named.calls[1]?.url).toBe("/app/v1/chat/completions");
    const unnamed = server({ negotiate: () => networkError() });
    await run(unnamed);
    expect(unnamed.calls[1]?.url).toBe("v1/chat/completions");
  });

  it("falls back with the picked model, and with autoload off when the run may not load", async () => {
    const unsupported = () => json({ supported: false, reason: "gate_down", fallback_url: "/app/v1/chat/completions" });
    const picked = server({ negotiate: unsupported });
    await run(picked, { model: "beta" });
    expect(picked.calls[1]?.url).toBe("/app/v1/chat/completions");
    expect(picked.calls[1]?.body).toMatchObject({ model: "beta" });
    const noLoad = server({
      negotiate: unsupported,
      fallback: (c) => (c.url.endsWith("?autoload=false") ? sse(c, chunks(PLAIN)) : json({}, 500)),
    });
    const events = await run(noLoad, { model: "beta", autoload: false });
    expect(noLoad.calls[1]?.url).toBe("/app/v1/chat/completions?autoload=false");
    expect(last(events)).toMatchObject({ lane: "fallback" });
  });

  it("shows a notice while the model is loading, then falls back", async () => {
    const fake = server({ negotiate: () => json({ supported: false, reason: "model_loading", fallback_url: "/app/v1/chat/completions" }) });
    const events = await run(fake);
    expect(events[0]).toEqual({
      type: "notice",
      code: "model_loading",
      message: "The model is still loading; the reply starts as soon as it is ready.",
    });
    expect(last(events)).toMatchObject({ lane: "fallback" });
  });

  it("cancels a resumable direct stream before it falls back", async () => {
    const fake = server({
      negotiate: (call) =>
        json(grant({ conversation_id: "conv-1", token: (call.body as Record<string, unknown>).cancel ? "tok-cancel" : "tok-chat" })),
      lane: () => json({}, 503),
      stream: () => new Response(null, { status: 204 }),
    });
    const events = await run(fake, { resumable: true });
    expect(last(events)).toMatchObject({ lane: "fallback" });
    expect(fake.to("direct-stream").map((c) => c.body)).toEqual([{ max_tokens: 48, resumable: true }, { cancel: "conv-1" }]);
    const [cancel] = fake.to("/v1/stream", "DELETE");
    expect(cancel?.url).toBe(`${LANE}/v1/stream?conv_id=conv-1`);
    expect(cancel?.headers.authorization).toBe("Bearer tok-cancel");
  });
});

describe("visible errors", () => {
  it("says the session expired when the negotiation answers 401, without trying the baseline", async () => {
    const fake = server({ negotiate: () => json({ detail: "Not authenticated" }, 401) });
    const events = await run(fake);
    expect(events).toEqual([
      {
        type: "error",
        code: "session_expired",
        message: "Your session has expired. Open the sign-in link again to continue.",
        phase: "pre-output",
      },
    ]);
    expect(fake.calls).toHaveLength(1);
  });

  it("waits Retry-After once on 429, then negotiates again", async () => {
    let n = 0;
    const fake = server({ negotiate: () => (n++ === 0 ? json({}, 429, { "Retry-After": "3" }) : json(grant())) });
    const slept: number[] = [];
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms) }));
    expect(slept).toEqual([3000]);
    expect(last(events)).toMatchObject({ lane: "direct" });
  });

  it("gives up with a friendly error on a second 429", async () => {
    const fake = server({ negotiate: () => json({}, 429, { "Retry-After": "60" }) });
    const slept: number[] = [];
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms) }));
    expect(slept).toEqual([10_000]);
    expect(events).toEqual([expect.objectContaining({ type: "error", code: "rate_limited", phase: "pre-output" })]);
  });

  it("names the limit a second 429 gives as its reason: another stream still running", async () => {
    const refusal = { error: { code: 429, reason: "too_many_streams", message: "Too many streams at once." } };
    const fake = server({ negotiate: () => json(refusal, 429, { "Retry-After": "1" }) });
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, sleep: async () => undefined }));
    expect(events).toEqual([expect.objectContaining({ type: "error", code: "too_many_streams", phase: "pre-output" })]);
  });

  it("waits a baseline's 429 once: the lane request given up holds the stream until the gate reports it", async () => {
    const refusal = { error: { code: 429, reason: "too_many_streams", message: "Too many streams at once." } };
    let n = 0;
    const fake = server({
      lane: () => json({ error: { code: 502 } }, 502),
      fallback: (c) => (n++ === 0 ? json(refusal, 429, { "Retry-After": "1" }) : sse(c, chunks(PLAIN))),
    });
    const slept: number[] = [];
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms) }));
    expect(slept).toEqual([1000]);
    expect(errors(events)).toEqual([]);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "fallback" });
    const again = server({ lane: () => json({ error: { code: 502 } }, 502), fallback: () => json(refusal, 429, { "Retry-After": "1" }) });
    const refused = await collect(streamChat(REQUEST, { fetch: again.fetch, sleep: async () => undefined }));
    expect(refused).toEqual([expect.objectContaining({ type: "error", code: "too_many_streams", phase: "pre-output" })]);
  });

  it("says how many tokens overflowed the context, from llama-server's recorded 400", async () => {
    const body = new TextDecoder().decode(fixture("overflow.json"));
    const fake = server({ lane: () => new Response(body, { status: 400, headers: { "Content-Type": "application/json" } }) });
    const events = await run(fake);
    expect(events).toEqual([
      {
        type: "error",
        code: "context_overflow",
        message: "Message too long: 9,030 tokens exceeds the 2,048-token context window. Shorten it or start a new chat.",
        phase: "pre-output",
      },
    ]);
    expect(fake.calls).toHaveLength(2);
  });

  it("says the model cannot read images when an image request is refused", async () => {
    const image: ChatRequest = {
      messages: [{ role: "user", content: [{ type: "text", text: "?" }, { type: "image_url", image_url: { url: "data:image/png;base64,AA==" } }] }],
    };
    const vision = new TextDecoder().decode(fixture("vision.json"));
    const refused = server({
      lane: () => json({ error: { code: 400, message: "x", type: "invalid_request_error" } }, 400),
    });
    expect(await run(refused, {}, image)).toEqual([
      expect.objectContaining({ code: "vision_unsupported", message: "This model cannot read images. Remove the image and send again." }),
    ]);
    const raw = server({
      lane: () => new Response(vision, { status: 500 }),
      fallback: () => new Response(vision, { status: 500 }),
    });
    const events = await run(raw, {}, image);
    expect(events).toEqual([expect.objectContaining({ code: "vision_unsupported", phase: "pre-output" })]);
    expect(JSON.stringify(events)).not.toContain("mmproj");
  });

  it("turns a failing baseline into a friendly error and never shows the server's text", async () => {
    const fake = server({
      negotiate: () => json({ supported: false, reason: "disabled" }),
      fallback: () => json({ error: { code: 500, message: "Traceback /srv/secret.py" } }, 500),
    });
    const events = await run(fake);
    expect(events).toEqual([
      {
        type: "error",
        code: "server_error",
        message: "Something went wrong while generating the reply. Please try again.",
        phase: "pre-output",
      },
    ]);
  });

  it("calls a baseline answer that is not an event stream a bad response", async () => {
    const fake = server({ negotiate: () => json({ supported: false, reason: "disabled" }), fallback: () => json({ ok: true }) });
    expect(await run(fake)).toEqual([expect.objectContaining({ code: "bad_response", phase: "pre-output" })]);
  });

  it("reconnects with back-off while both lanes are unreachable, then streams direct again", async () => {
    let negotiations = 0;
    const fake = server({
      negotiate: () => (++negotiations <= 2 ? networkError() : json(grant())),
      fallback: () => networkError(),
    });
    const slept: number[] = [];
    const events = await collect(
      streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms), reconnectDelaysMs: [5, 10, 20] }),
    );
    expect(slept).toEqual([5, 10]);
    expect(events.filter((e) => e.type === "notice")).toEqual([
      { type: "notice", code: "reconnecting", message: "Reconnecting…" },
      { type: "notice", code: "reconnecting", message: "Reconnecting…" },
    ]);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
  });

  it("reconnects while the gate answers 502 for the app (a broker restart), then streams", async () => {
    const APP_DOWN = { error: { message: "The app is not reachable right now; it may be restarting.", code: 502 } };
    let negotiations = 0;
    const fake = server({
      negotiate: () => (++negotiations <= 1 ? json(APP_DOWN, 502) : json(grant())),
      fallback: () => json(APP_DOWN, 502),
    });
    const slept: number[] = [];
    const events = await collect(
      streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms), reconnectDelaysMs: [5, 10] }),
    );
    expect(slept).toEqual([5]);
    expect(events.filter((e) => e.type === "notice")).toEqual([
      { type: "notice", code: "reconnecting", message: "Reconnecting…" },
    ]);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
  });

  it("shows the server's own error when a 502 outlasts the reconnect attempts", async () => {
    const fake = server({ negotiate: () => json({}, 502), fallback: () => json({ error: { code: 502 } }, 502) });
    const events = await run(fake, { reconnectDelaysMs: [1] });
    expect(last(events)).toMatchObject({ type: "error", code: "server_error", phase: "pre-output" });
  });

  it("waits while the model loads (the baseline answers 503), then streams when it is ready", async () => {
    let negotiations = 0;
    const fake = server({
      negotiate: () =>
        ++negotiations <= 2 ? json({ supported: false, reason: "model_loading" }) : json(grant()),
      fallback: () => json({ error: { message: "Loading model", code: 503 } }, 503),
    });
    const slept: number[] = [];
    const events = await collect(
      streamChat(REQUEST, { fetch: fake.fetch, sleep: async (ms) => void slept.push(ms), loadingDelaysMs: [7, 9, 11] }),
    );
    expect(slept).toEqual([7, 9]);
    expect(events.filter((e) => e.type === "notice").map((e) => (e as { code: string }).code)).toEqual([
      "model_loading",
      "model_loading",
      "model_loading",
      "model_loading",
    ]);
    expect(events.some((e) => e.type === "error")).toBe(false);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
  });

  it("waits on the loading schedule while the broker says loading and the baseline cannot reach llama-server yet", async () => {
    // A gate restarting llama-server: its health says loading, but until llama-server listens the
    // baseline's request through the gate is 502, four times here: more than the one reconnect attempt allows.
    const UPSTREAM_DOWN = { error: { message: "The model server is not reachable.", code: 502 } };
    let negotiations = 0;
    const fake = server({
      negotiate: () => (++negotiations <= 4 ? json({ supported: false, reason: "model_loading" }) : json(grant())),
      fallback: () => json(UPSTREAM_DOWN, 502),
    });
    const slept: number[] = [];
    const events = await collect(
      streamChat(REQUEST, {
        fetch: fake.fetch,
        sleep: async (ms) => void slept.push(ms),
        reconnectDelaysMs: [1],
        loadingDelaysMs: [7, 9, 11, 13],
      }),
    );
    expect(slept).toEqual([7, 9, 11, 13]);
    expect(events.filter((e) => e.type === "notice").map((e) => (e as { code: string }).code)).not.toContain(
      "reconnecting",
    );
    expect(events.some((e) => e.type === "error")).toBe(false);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
  });

  it("says the model is loading when the loading waits run out with the baseline still unreachable", async () => {
    const fake = server({
      negotiate: () => json({ supported: false, reason: "model_loading" }),
      fallback: () => json({ error: { code: 502 } }, 502),
    });
    const events = await run(fake, { reconnectDelaysMs: [1, 1, 1, 1, 1], loadingDelaysMs: [1] });
    expect(last(events)).toMatchObject({ type: "error", code: "model_loading", phase: "pre-output" });
  });

  it("says the model is loading once the waits run out", async () => {
    const fake = server({
      negotiate: () => json({ supported: false, reason: "model_loading" }),
      fallback: () => json({ error: { message: "Loading model", code: 503 } }, 503),
    });
    const events = await run(fake, { loadingDelaysMs: [1] });
    expect(last(events)).toEqual({
      type: "error",
      code: "model_loading",
      message: "The model is still loading. Try again in a moment.",
      phase: "pre-output",
    });
  });

  it("says the connection is lost once the reconnect attempts run out", async () => {
    const fake = server({ negotiate: () => networkError(), fallback: () => networkError() });
    const events = await run(fake, { reconnectDelaysMs: [1] });
    expect(last(events)).toEqual({
      type: "error",
      code: "connection_lost",
      message: "The connection was lost. Check your network and try again.",
      phase: "pre-output",
    });
  });
});
