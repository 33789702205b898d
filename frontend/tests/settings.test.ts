/** The conversation's settings: fields to request values, blanks left to the server, bad values named. */
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";
import { describe, expect, it } from "vitest";
import { NUMBER_FIELDS, blankSettings, parseSettings, requestFields, settingsFrom } from "../src/page/settings.ts";

describe("parseSettings", () => {
  it("leaves blank fields to the server", () => {
    const { settings, errors } = parseSettings({ system: "  ", temperature: "", maxTokens: " " });
    expect(settings).toEqual({ system: "" });
    expect(errors).toEqual([]);
    expect(requestFields(settings)).toEqual({});
  });

  it("reads a system prompt, a temperature and a token limit", () => {
    const { settings } = parseSettings({ system: " Be brief. ", temperature: "0.2", maxTokens: "64" });
    expect(settings).toEqual({ system: "Be brief.", temperature: 0.2, maxTokens: 64 });
    expect(requestFields(settings)).toEqual({ temperature: 0.2, max_tokens: 64 });
  });

  it("names each bad value instead of guessing", () => {
    for (const temperature of ["-1", "2.5", "hot", "NaN", "Infinity"]) {
      expect(parseSettings({ system: "", temperature, maxTokens: "" }).errors).toEqual(["Temperature must be a number from 0 to 2."]);
    }
    for (const maxTokens of ["0", "1.5", "-3", "lots", "1e9"]) {
      expect(parseSettings({ system: "", temperature: "", maxTokens }).errors).toEqual(["Max tokens must be a whole number of at least 1."]);
    }
  });
});

describe("samplers", () => {
  it("sends each one set under llama-server's name, and none left blank", () => {
    const { settings, errors } = parseSettings({ ...blankSettings(), topP: "0.9", topK: "40", minP: "0.05", repeatPenalty: "1.1" });
    expect(errors).toEqual([]);
    expect(requestFields(settings)).toEqual({ top_p: 0.9, top_k: 40, min_p: 0.05, repeat_penalty: 1.1 });
    expect(requestFields(parseSettings({ ...blankSettings(), topK: "0" }).settings)).toEqual({ top_k: 0 });
  });

  it("names each bad value", () => {
    expect(parseSettings({ ...blankSettings(), topP: "1.5" }).errors).toEqual(["Top P must be a number from 0 to 1."]);
    expect(parseSettings({ ...blankSettings(), topK: "2.5" }).errors).toEqual(["Top K must be a whole number from 0 to 1000."]);
    expect(parseSettings({ ...blankSettings(), minP: "-0.1" }).errors).toEqual(["Min P must be a number from 0 to 1."]);
    expect(parseSettings({ ...blankSettings(), repeatPenalty: "x" }).errors).toEqual(["Repeat penalty must be a number from 0 to 2."]);
  });

  it("reads a stored record from before the samplers as blanks, and drops unknown or mistyped fields", () => {
    expect(settingsFrom({ system: "Be brief.", temperature: "0.2", maxTokens: "" })).toEqual({ ...blankSettings(), system: "Be brief.", temperature: "0.2" });
    expect(settingsFrom({ topK: 40, extra: "x", minP: "0.1" })).toEqual({ ...blankSettings(), minP: "0.1" });
  });
});

describe("the page's number fields", () => {
  it("offer in the browser the range the table checks (index.html is written by hand: held equal here)", () => {
    const page = new JSDOM(readFileSync(new URL("../src/page/index.html", import.meta.url), "utf8")).window.document;
    for (const field of Object.values(NUMBER_FIELDS)) {
      const input = page.getElementById(`setting-${field.id}`) as HTMLInputElement | null;
      expect(input, field.id).not.toBeNull();
      expect([input?.type, Number(input?.min), Number(input?.max)], field.id).toEqual(["number", field.min, field.max]);
      expect(input?.step === "1", field.id).toBe(field.whole);
      expect(input?.inputMode, field.id).toBe(field.whole ? "numeric" : "decimal");
    }
  });
});
