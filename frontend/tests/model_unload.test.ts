/** The owner's Unload control: when it is offered, what it asks the broker, and what a refusal says. */
import { afterEach, describe, expect, it, vi } from "vitest";
import { ModelUnload, offerUnload, unloadRefusal } from "../src/page/model_unload.ts";
import { type ModelEntry, ModelPicker } from "../src/page/models.ts";

describe("offerUnload", () => {
  it("offers Unload only for a loaded model, only to a user the broker lets unload", () => {
    expect(offerUnload({ id: "a", status: "loaded" }, true)).toBe(true);
    expect(offerUnload({ id: "a", status: "loaded" }, false)).toBe(false);
    expect(offerUnload({ id: "a", status: "loading" }, true)).toBe(false);
    expect(offerUnload({ id: "a", status: "unloaded" }, true)).toBe(false);
    expect(offerUnload(undefined, true)).toBe(false);
  });
});

describe("unloadRefusal", () => {
  it("says why in a sentence", () => {
    expect(unloadRefusal(403)).toBe("Only the owner may unload a model.");
    expect(unloadRefusal(409)).toBe("This server runs one model, which stays loaded.");
    expect(unloadRefusal(401)).toBe("Your session has ended: log in again to unload a model.");
    expect(unloadRefusal(0)).toBe("The model could not be unloaded: the server did not answer.");
    expect(unloadRefusal(502)).toBe("The model could not be unloaded.");
  });
});

type Watcher = (model: ModelEntry | undefined) => void;

function fakes(): { picker: ModelPicker; button: HTMLButtonElement; watchers: Watcher[]; stopped: () => number } {
  const watchers: Watcher[] = [];
  let stops = 0;
  const picker = {
    value: "alpha",
    canUnload: true,
    refresh: async () => undefined,
    watch: (watcher: Watcher) => {
      watchers.push(watcher);
      return () => void stops++;
    },
  };
  const button = { hidden: true, disabled: false, addEventListener: () => undefined };
  return { picker: picker as unknown as ModelPicker, button: button as unknown as HTMLButtonElement, watchers,
    stopped: () => stops };
}

describe("ModelUnload", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("posts the chosen model's name to the broker, then follows the list until it is not loaded", async () => {
    const asked: [string, RequestInit | undefined][] = [];
    vi.stubGlobal("fetch", async (url: string, init?: RequestInit) => {
      asked.push([url, init]);
      return new Response('{"model":"alpha","status":"unloaded"}');
    });
    const { picker, button, watchers, stopped } = fakes();
    const notices: string[] = [];
    const unload = new ModelUnload(picker, button, (text) => notices.push(text));
    unload.show({ id: "alpha", status: "loaded" });
    expect(button.hidden).toBe(false);
    await unload.unload();
    expect(asked.map(([url, init]) => [url, init?.method, init?.body])).toEqual([
      ["v1/models/unload", "POST", '{"model":"alpha"}'],
    ]);
    expect(button.disabled).toBe(true);
    watchers[0]?.({ id: "alpha", status: "loaded" }); // the router's answer not shown yet
    expect(stopped()).toBe(0);
    watchers[0]?.({ id: "alpha", status: "unloaded" });
    expect(stopped()).toBe(1);
    expect([button.hidden, button.disabled]).toEqual([true, false]);
    expect(notices).toEqual([""]);
  });

  it("says why when the broker refuses, and follows nothing", async () => {
    vi.stubGlobal("fetch", async () => new Response('{"error":{}}', { status: 403 }));
    const { picker, button, watchers } = fakes();
    const notices: string[] = [];
    await new ModelUnload(picker, button, (text) => notices.push(text)).unload();
    expect(notices).toEqual(["Only the owner may unload a model."]);
    expect(watchers).toEqual([]);
    expect(button.disabled).toBe(false);
  });
});

describe("the model list's can_unload", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("is read from the broker's answer, true only where it says true", async () => {
    const bodies = [{ data: [], can_unload: true }, { data: [] }, { data: [], can_unload: "yes" }];
    vi.stubGlobal("fetch", async () => new Response(JSON.stringify(bodies.shift())));
    vi.stubGlobal("document", { createElement: () => ({ dataset: {} as Record<string, string> }) });
    const select = { value: "", hidden: false, addEventListener: () => undefined, replaceChildren: () => undefined };
    const picker = new ModelPicker(select as unknown as HTMLSelectElement);
    const seen: boolean[] = [];
    for (let i = 0; i < 3; i++) {
      await picker.refresh();
      seen.push(picker.canUnload);
    }
    expect(seen).toEqual([true, false, false]);
  });
});
