import { afterEach, describe, expect, it, vi } from "vitest";
import { loadingLine, ModelPicker, parseModels, statusWords } from "../src/page/models.ts";

describe("the model picker's load progress", () => {
  it("keeps a loading model's fraction, and nothing else's", () => {
    const models = parseModels({
      data: [
        { id: "alpha", status: "loading", progress: 0.42 },
        { id: "beta", status: "loaded", progress: 0.5 },
        { id: "gamma", status: "loading", progress: 7 },
        { id: "delta", status: "loading", progress: "half" },
        { id: "eps", status: "loading" },
      ],
    });
    expect(models).toEqual([
      { id: "alpha", status: "loading", progress: 0.42 },
      { id: "beta", status: "loaded" },
      { id: "gamma", status: "loading" },
      { id: "delta", status: "loading" },
      { id: "eps", status: "loading" },
    ]);
  });

  it("shows the percentage where the router reported it, the state alone otherwise", () => {
    expect(statusWords({ id: "alpha", status: "loading", progress: 0.42 })).toBe("loading… 42%");
    expect(statusWords({ id: "alpha", status: "loading" })).toBe("loading…");
    expect(statusWords({ id: "alpha", status: "loaded" })).toBe("ready");
    expect(loadingLine("beta", 1)).toBe("Loading beta… 100%");
    expect(loadingLine("beta", undefined)).toBe("Loading beta…");
  });
});

describe("the model list's vision flag", () => {
  it("marks only a model that says it reads images", () => {
    const models = parseModels({
      data: [
        { id: "eyes", status: "loaded", vision: true },
        { id: "text", status: "loaded", vision: false },
        { id: "odd", status: "loaded", vision: "yes" },
      ],
    });
    expect(models.map((model) => model.vision === true)).toEqual([true, false, false]);
  });
});

describe("the model list's tools flag", () => {
  it("marks only a model whose template says it takes tools", () => {
    const models = parseModels({
      data: [
        { id: "caller", status: "loaded", tools: true },
        { id: "plain", status: "loaded" },
        { id: "odd", status: "loaded", tools: "true" },
      ],
    });
    expect(models.map((model) => model.tools === true)).toEqual([true, false, false]);
  });
});

describe("the model picker's reads", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("drops an answer older than the one it shows, so a stale state cannot land after a newer one", async () => {
    const answers: ((status: string) => void)[] = [];
    vi.stubGlobal("fetch", () =>
      new Promise<Response>((resolve) => {
        answers.push((status) => resolve(new Response(JSON.stringify({ data: [{ id: "alpha", status }] }))));
      }),
    );
    vi.stubGlobal("document", { createElement: () => ({ dataset: {} as Record<string, string> }) });
    const select = { value: "alpha", hidden: false, addEventListener: () => undefined, replaceChildren: () => undefined };
    const picker = new ModelPicker(select as unknown as HTMLSelectElement);
    const older = picker.refresh(); // the poll's read, asked while the load ran
    const newer = picker.refresh(); // the read after the load answered
    answers[1]?.("loaded");
    await newer;
    answers[0]?.("unloaded");
    await older;
    expect(picker.entry("alpha")?.status).toBe("loaded");
    const latest = picker.refresh();
    answers[2]?.("unloaded"); // a read asked later wins, whatever it says
    await latest;
    expect(picker.entry("alpha")?.status).toBe("unloaded");
  });
});
