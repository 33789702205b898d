import { describe, expect, it } from "vitest";
import { loadingLine, parseModels, statusWords } from "../src/page/models.ts";

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
