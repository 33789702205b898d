/** `directFetch` picks the lane route of each request from the registry (`lanes.ts`): it negotiates for
 * that route, sends the request to that route on the lane, and falls back to that route off the lane. */
import OpenAI from "openai";
import { describe, expect, it } from "vitest";
import { directFetch } from "../src/direct_fetch.ts";
import { LANE_ROUTES, type LaneRouteName } from "../src/lanes.ts";
import { type Call, FakeFetch, json } from "./fake.ts";

const APP = "http://app.test:8000";
const LANE = "http://app.test:8001/direct";

const ANSWERS: Partial<Record<LaneRouteName, unknown>> = {
  chat: { id: "c1", object: "chat.completion", created: 0, model: "smol",
    choices: [{ index: 0, message: { role: "assistant", content: "hello" }, finish_reason: "stop" }] },
  responses: { id: "resp_1", object: "response", created_at: 0, model: "smol", status: "completed",
    output: [{ type: "message", id: "m1", role: "assistant", status: "completed",
      content: [{ type: "output_text", text: "hello", annotations: [] }] }] },
  completions: { id: "c2", object: "text_completion", created: 0, model: "smol",
    choices: [{ index: 0, text: "hello", finish_reason: "stop", logprobs: null }] },
  embeddings: { object: "list", model: "smol", usage: { prompt_tokens: 1, total_tokens: 1 },
    data: [{ object: "embedding", index: 0, embedding: [0.5, -0.5] }] },
  messages: { id: "msg_1", type: "message", role: "assistant", model: "smol", content: [{ type: "text", text: "hello" }] },
  messages_count_tokens: { input_tokens: 7 },
};

function routeAt(method: string, path: string): LaneRouteName | undefined {
  return (Object.keys(LANE_ROUTES) as LaneRouteName[]).find(
    (name) => LANE_ROUTES[name].method === method && LANE_ROUTES[name].path === path,
  );
}

/** The app: a grant is single use and good for the route it was negotiated for (403 elsewhere). */
function app(options: { supported?: boolean; fallbackUrl?: string; answerRoute?: string } = {}): FakeFetch {
  const grants = new Map<string, string>();
  let minted = 0;
  return new FakeFetch((call: Call) => {
    if (call.url === "direct-stream") {
      return (c) => {
        const route = options.answerRoute ?? (c.body as { route?: string }).route ?? "chat";
        if (options.supported === false) {
          return json({ supported: false, reason: "disabled", route, fallback_url: options.fallbackUrl ?? "" });
        }
        minted += 1;
        grants.set(`grant-${minted}`, route);
        return json({ supported: true, url: LANE, token: `grant-${minted}`, route, conversation_id: null, model: "smol",
          fallback_url: options.fallbackUrl ?? "" });
      };
    }
    if (call.url.startsWith(`${LANE}/`)) {
      return (c) => {
        const token = c.headers.authorization?.replace("Bearer ", "") ?? "";
        const granted = grants.get(token);
        grants.delete(token);
        const route = routeAt(c.method, c.url.slice(LANE.length));
        if (granted === undefined) return json({ error: { message: "spent", code: 401 } }, 401);
        if (route === undefined || granted !== route) return json({ error: { message: "another route", code: 403 } }, 403);
        return json(ANSWERS[route], 200, { "x-lane": "direct", "x-route": route });
      };
    }
    const path = call.url.startsWith("http") ? new URL(call.url).pathname : `/${call.url.replace(/^\//, "")}`;
    const route = routeAt(call.method, path);
    if (route !== undefined && ANSWERS[route] !== undefined) {
      return () => json(ANSWERS[route], 200, { "x-lane": "fallback", "x-route": route });
    }
    return () => json({ error: { message: "nothing", code: 404 } }, 404);
  });
}

function client(fake: FakeFetch): OpenAI {
  return new OpenAI({ baseURL: `${APP}/v1`, apiKey: "unused", maxRetries: 0,
    fetch: directFetch({ fetch: fake.fetch, headTimeoutMs: 500 }) });
}

/** A request as the Anthropic SDK sends it: its key in `x-api-key`. */
function anthropicStyle(fake: FakeFetch, path: string): Promise<Response> {
  return directFetch({ fetch: fake.fetch, headTimeoutMs: 500 })(`${APP}${path}`, {
    method: "POST",
    headers: { "x-api-key": "unused", "anthropic-version": "2023-06-01", "content-type": "application/json" },
    body: JSON.stringify({ model: "smol", max_tokens: 16, messages: [{ role: "user", content: "hi" }] }),
  });
}

describe("directFetch picks the route of each request", () => {
  it("negotiates each OpenAI SDK call for its own route and sends it there", async () => {
    const fake = app();
    const openai = client(fake);
    const chat = await openai.chat.completions.create({ model: "smol", messages: [{ role: "user", content: "hi" }] });
    expect(chat.choices[0]?.message.content).toBe("hello");
    expect((await openai.responses.create({ model: "smol", input: "hi" })).output_text).toBe("hello");
    expect((await openai.completions.create({ model: "smol", prompt: "hi" })).choices[0]?.text).toBe("hello");
    expect((await openai.embeddings.create({ model: "smol", input: "hi", encoding_format: "float" })).data[0]?.embedding).toEqual([0.5, -0.5]);
    // chat is the default route: its negotiation need not name it
    expect(fake.to("direct-stream").map((c) => c.body)).toEqual([
      { model: "smol" },
      { route: "responses", model: "smol" },
      { route: "completions", model: "smol" },
      { route: "embeddings", model: "smol" },
    ]);
    expect(fake.to(LANE).map((c) => [c.url, c.headers.authorization])).toEqual([
      [`${LANE}/v1/chat/completions`, "Bearer grant-1"],
      [`${LANE}/v1/responses`, "Bearer grant-2"],
      [`${LANE}/v1/completions`, "Bearer grant-3"],
      [`${LANE}/v1/embeddings`, "Bearer grant-4"],
    ]);
  });

  it.each([
    ["/v1/messages", "messages"],
    ["/v1/messages/count_tokens", "messages_count_tokens"],
  ])("sends an Anthropic-style %s to the lane on a %s grant, without the SDK's key", async (path, route) => {
    const fake = app();
    const response = await anthropicStyle(fake, path);
    expect([response.status, response.headers.get("x-lane"), response.headers.get("x-route")]).toEqual([200, "direct", route]);
    expect(fake.to("direct-stream").map((c) => c.body)).toEqual([{ route, model: "smol" }]);
    const [lane] = fake.to(LANE);
    expect(lane?.url).toBe(`${LANE}${path}`);
    expect(lane?.headers["x-api-key"]).toBeUndefined();
    expect(lane?.headers["anthropic-version"]).toBe("2023-06-01");
  });

  it("falls back to the route's own path, not to chat's, when the answer's fallback is chat's", async () => {
    const fake = app({ supported: false, fallbackUrl: "/v1/chat/completions" });
    const response = await anthropicStyle(fake, "/v1/messages");
    expect([response.headers.get("x-lane"), response.headers.get("x-route")]).toEqual(["fallback", "messages"]);
    const baseline = fake.calls.at(-1);
    expect([baseline?.url, baseline?.credentials, baseline?.headers.authorization, baseline?.headers["x-api-key"]])
      .toEqual(["v1/messages", "same-origin", undefined, undefined]);
  });

  it("does not spend a grant answered for another route: the baseline serves the request", async () => {
    const fake = app({ answerRoute: "chat" });
    const response = await anthropicStyle(fake, "/v1/messages");
    expect([response.headers.get("x-lane"), response.headers.get("x-route")]).toEqual(["fallback", "messages"]);
    expect(fake.to(LANE)).toEqual([]);
  });

  it("falls back to the answer's fallback_url when it names the route", async () => {
    const fake = app({ supported: false, fallbackUrl: "/llm/v1/messages/count_tokens" });
    await anthropicStyle(fake, "/v1/messages/count_tokens");
    expect(fake.calls.at(-1)?.url).toBe("/llm/v1/messages/count_tokens");
  });

  it.each([
    ["GET", "/v1/stream?conv_id=c1"],
    ["DELETE", "/v1/stream?conv_id=c1"],
    ["GET", "/v1/messages"],
    ["POST", "/v1/messages/other"],
  ])("sends %s %s, which no SDK negotiates for, to the app as sent", async (method, path) => {
    const fake = app();
    await directFetch({ fetch: fake.fetch })(`${APP}${path}`, { method });
    expect(fake.calls.map((c) => [c.url, c.method, c.credentials])).toEqual([[`${APP}${path}`, method, "same-origin"]]);
  });

  it("keeps the chat route's fallbackUrl option", async () => {
    const fake = app({ supported: false });
    const fetcher = directFetch({ fetch: fake.fetch, fallbackUrl: "/v1/chat/completions" });
    await fetcher(`${APP}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "smol", messages: [] }) });
    await fetcher(`${APP}/v1/responses`, { method: "POST", body: JSON.stringify({ model: "smol", input: "hi" }) });
    expect(fake.calls.filter((c) => c.url !== "direct-stream").map((c) => c.url)).toEqual(["/v1/chat/completions", "v1/responses"]);
  });
});
