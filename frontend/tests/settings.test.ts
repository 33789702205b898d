/** The conversation's settings: fields to request values, blanks left to the server, bad values named. */
import { describe, expect, it } from "vitest";
import { parseSettings, requestFields } from "../src/page/settings.ts";

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
