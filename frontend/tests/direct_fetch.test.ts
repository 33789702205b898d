/** `directFetch` driven by the real OpenAI JS SDK against a scripted app: grants are single use, as the gate's are. */
import OpenAI from "openai";
import { describe, expect, it } from "vitest";
import { directFetch } from "../src/direct_fetch.ts";
import { type Call, FakeFetch, json } from "./fake.ts";

const APP = "http://app.test:8000";
const LANE = "http://app.test:8001/direct";
const MESSAGES = [{ role: "user" as const, content: "hi" }];
const COMPLETION = {
  id: "c1",
  object: "chat.completion",
  created: 0,
  model: "smol",
  choices: [{ index: 0, message: { role: "assistant", content: "hello" }, finish_reason: "stop" }],
};

function chunk(text: string): string {
  const value = { id: "c1", object: "chat.completion.chunk", created: 0, model: "smol",
    choices: [{ index: 0, delta: { content: text }, finish_reason: null }] };
  return `data: ${JSON.stringify(value)}\n\n`;
}

/** A lane that sends no head until the request is aborted, as a real fetch does. */
function hang(call: Call): Promise<Response> {
  return new Promise((_resolve, reject) => {
    call.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")), { once: true });
  });
}

interface Script {
  negotiation?: (call: Call) => Response;
  lane?: (call: Call, nth: number) => Response | Promise<Response>;
}

/** The app: negotiation mints `grant-N`, the lane takes each grant once, the baseline takes the cookie. */
function app(script: Script = {}): { fake: FakeFetch; produced: { n: number }[] } {
  const spent = new Set<string>();
  let minted = 0;
  const produced: { n: number }[] = [];
  const answer = (call: Call, lane: string): Response => {
    const body = call.body as { stream?: boolean; model?: string };
    if (!body.stream) return json({ ...COMPLETION, lane }, 200, { "x-lane": lane });
    const counter = { n: 0 };
    produced.push(counter);
    const texts = ["a", "b", "c"];
    const encoder = new TextEncoder();
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const text = texts[counter.n];
        if (text === undefined) {
          controller.enqueue(encoder.encode("data: [DONE]\n\n"));
          controller.close();
          return;
        }
        counter.n += 1;
        controller.enqueue(encoder.encode(chunk(text)));
      },
    }, { highWaterMark: 0 });
    return new Response(stream, { headers: { "content-type": "text/event-stream", "x-lane": lane } });
  };
  const fake = new FakeFetch((call) => {
    if (call.url === "direct-stream") {
      return () => {
        if (script.negotiation) return script.negotiation(call);
        minted += 1;
        return json({ supported: true, url: LANE, token: `grant-${minted}`, conversation_id: null, model: "smol",
          fallback_url: "/v1/chat/completions" });
      };
    }
    if (call.url === `${LANE}/v1/chat/completions`) {
      return (c, nth) => {
        const token = c.headers.authorization?.replace("Bearer ", "") ?? "";
        if (spent.has(token)) return json({ error: { message: "The token has already been used", code: 401 } }, 401);
        spent.add(token);
        return script.lane ? script.lane(c, nth) : answer(c, "direct");
      };
    }
    if (call.url.endsWith("/v1/chat/completions")) return (c) => answer(c, "fallback");
    if (call.url.endsWith("/v1/models")) {
      return () => json({ object: "list", data: [{ id: "smol", object: "model", created: 0, owned_by: "x" }] });
    }
    return () => json({ error: { message: "nothing", code: 404 } }, 404);
  });
  return { fake, produced };
}

function client(fake: FakeFetch, maxRetries = 0): OpenAI {
  return new OpenAI({
    baseURL: `${APP}/v1`,
    apiKey: "unused",
    maxRetries,
    fetch: directFetch({ fetch: fake.fetch, headTimeoutMs: 500 }),
  });
}

describe("directFetch with the OpenAI SDK", () => {
  it("holds three turns on one client, each on a fresh grant, with the SDK's own headers", async () => {
    const { fake } = app();
    const openai = client(fake);
    for (let turn = 0; turn < 3; turn++) {
      const { data, response } = await openai.chat.completions.create({ model: "smol", messages: MESSAGES }).withResponse();
      expect(response.headers.get("x-lane")).toBe("direct");
      expect(data.choices[0]?.message.content).toBe("hello");
    }
    const lane = fake.to("/direct/v1/chat/completions");
    expect(lane.map((c) => c.headers.authorization)).toEqual(["Bearer grant-1", "Bearer grant-2", "Bearer grant-3"]);
    expect(lane[0]?.credentials).toBe("omit");
    expect(lane[0]?.headers["x-stainless-lang"]).toBe("js");
    const negotiations = fake.to("direct-stream");
    expect(negotiations.map((c) => [c.credentials, c.body])).toEqual(Array(3).fill(["same-origin", { model: "smol" }]));
  });

  it("streams without reading ahead of the SDK", async () => {
    const { fake, produced } = app();
    const openai = client(fake);
    for (let turn = 0; turn < 3; turn++) {
      const stream = await openai.chat.completions.create({ model: "smol", messages: MESSAGES, stream: true });
      const texts: string[] = [];
      for await (const part of stream) {
        if (texts.length === 0) expect(produced[turn]?.n).toBeLessThan(3);
        texts.push(part.choices[0]?.delta.content ?? "");
      }
      expect(texts).toEqual(["a", "b", "c"]);
    }
  });

  it("falls back to the baseline with the cookie and no Authorization when unsupported", async () => {
    const { fake } = app({
      negotiation: () => json({ supported: false, reason: "disabled", fallback_url: "/v1/chat/completions" }),
    });
    const openai = client(fake);
    for (let turn = 0; turn < 3; turn++) {
      const { response } = await openai.chat.completions.create({ model: "smol", messages: MESSAGES }).withResponse();
      expect(response.headers.get("x-lane")).toBe("fallback");
    }
    const baseline = fake.to("/v1/chat/completions").filter((c) => !c.url.includes("/direct/"));
    expect(baseline.map((c) => [c.url, c.credentials, c.headers.authorization, c.headers["x-unused-grant"]])).toEqual(
      Array(3).fill(["/v1/chat/completions", "same-origin", undefined, undefined]),
    );
  });

  it.each([
    ["a 502", () => json({ error: { message: "down", code: 502 } }, 502)],
    ["a 403", () => json({ error: { message: "no", code: 403 } }, 403)],
    ["an unreachable lane", () => Promise.reject(new TypeError("Failed to fetch"))],
    ["no head in time", hang],
  ])("falls back before the first byte on %s from the lane", async (_name, lane) => {
    const { fake } = app({ lane });
    const { response } = await client(fake).chat.completions.create({ model: "smol", messages: MESSAGES }).withResponse();
    expect(response.headers.get("x-lane")).toBe("fallback");
    // The grant the lane could not use rides along: the baseline serves under it instead of reserving another.
    const baseline = fake.to("/v1/chat/completions").filter((c) => !c.url.includes("/direct/"));
    expect(baseline.map((c) => c.headers["x-unused-grant"])).toEqual(["grant-1"]);
  });

  it.each([
    [401, OpenAI.AuthenticationError],
    [429, OpenAI.RateLimitError],
    [404, OpenAI.NotFoundError],
  ])("hands a refused negotiation (%i) to the SDK as its typed error", async (status, error) => {
    const { fake } = app({ negotiation: () => json({ error: { message: "refused", code: status } }, status) });
    await expect(client(fake).chat.completions.create({ model: "smol", messages: MESSAGES })).rejects.toBeInstanceOf(error);
    expect(fake.calls.map((c) => c.url)).toEqual(["direct-stream"]);
  });

  it("sends other routes to the app with the cookie and without the SDK's key", async () => {
    const { fake } = app();
    const models = await client(fake).models.list();
    expect(models.data.map((m) => m.id)).toEqual(["smol"]);
    expect(fake.calls.map((c) => [c.url, c.credentials, c.headers.authorization])).toEqual([
      [`${APP}/v1/models`, "same-origin", undefined],
    ]);
  });

  it("a user abort is not turned into a fallback", async () => {
    const { fake } = app({ lane: hang });
    const controller = new AbortController();
    const pending = client(fake).chat.completions.create({ model: "smol", messages: MESSAGES }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toBeInstanceOf(OpenAI.APIUserAbortError);
    expect(fake.calls.filter((c) => c.url === "/v1/chat/completions")).toEqual([]);
  });
});
