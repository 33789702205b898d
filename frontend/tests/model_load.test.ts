/** What the Load control shows for each model state, and what a refused load says to a user. */
import { describe, expect, it } from "vitest";
import { heldAsLoading, loadRefusal, loadState, STALE_LISTINGS } from "../src/page/model_load.ts";

describe("loadState", () => {
  it("offers Load only for a model that is not loaded", () => {
    expect(loadState({ id: "a", status: "unloaded" })).toEqual({ offer: true, progress: null, text: "" });
    expect(loadState({ id: "a", status: "loaded" })).toEqual({ offer: false, progress: null, text: "" });
    expect(loadState(undefined)).toEqual({ offer: false, progress: null, text: "" });
  });

  it("shows a load's percentage where the router reported it", () => {
    expect(loadState({ id: "a", status: "loading", progress: 0.42 })).toEqual({ offer: false, progress: 0.42, text: "Loading 42%…" });
    expect(loadState({ id: "a", status: "loading" })).toEqual({ offer: false, progress: null, text: "Loading…" });
  });
});

describe("loadRefusal", () => {
  it("says when to try again after too many loads", () => {
    expect(loadRefusal(429, "12")).toBe("Too many model loads for now. Try again in 12 s.");
    expect(loadRefusal(429, null)).toBe("Too many model loads for now. Try again later.");
  });

  it("names an ended session and a model the user may not use", () => {
    expect(loadRefusal(401, null)).toBe("Your session has ended: log in again to load a model.");
    expect(loadRefusal(400, null)).toBe("This model is not available to you.");
    expect(loadRefusal(500, null)).toBe("The model could not be loaded.");
  });
});

describe("heldAsLoading", () => {
  it("takes a 'not loaded' listing of the model just loaded as stale, while listings are left to hold", () => {
    const holding = { id: "alpha", left: STALE_LISTINGS };
    expect(STALE_LISTINGS).toBeGreaterThanOrEqual(2); // the first read after a load may be 1.5 s old
    expect(heldAsLoading({ id: "alpha", status: "unloaded" }, holding)).toBe(true);
    expect(heldAsLoading({ id: "alpha", status: "unloaded" }, { id: "alpha", left: 0 })).toBe(false);
  });

  it("holds nothing for another model, a model listed loading or loaded, or no load", () => {
    const holding = { id: "alpha", left: STALE_LISTINGS };
    expect(heldAsLoading({ id: "beta", status: "unloaded" }, holding)).toBe(false);
    expect(heldAsLoading({ id: "alpha", status: "loading" }, holding)).toBe(false);
    expect(heldAsLoading({ id: "alpha", status: "loaded" }, holding)).toBe(false);
    expect(heldAsLoading({ id: "alpha", status: "unloaded" }, null)).toBe(false);
    expect(heldAsLoading(undefined, holding)).toBe(false);
  });
});
