/**
 * The conversation's settings: a system prompt, the temperature, a reply's token limit and a few
 * samplers. Blank means the server's own choice; the broker clamps the limit to the grant's cap
 * whatever is asked.
 */

export interface ChatSettings {
  system: string;
  temperature?: number;
  maxTokens?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repeatPenalty?: number;
}

type NumberSetting = Exclude<keyof ChatSettings, "system">;

/** Each field as typed, kept with the conversation (a stored field that is missing reads as blank). */
export type SettingsInput = { system: string } & Record<NumberSetting, string>;

export const TEMPERATURE_MAX = 2;
export const MAX_TOKENS_MAX = 1_000_000;

interface NumberField {
  /** The request body's field (llama-server's name). */
  wire: string;
  /** The field's element, `setting-<id>`. */
  id: string;
  min: number;
  max: number;
  whole: boolean;
  error: string;
}

/**
 * The numeric settings: the temperature, a reply's token limit, and the samplers most people reach
 * for (llama-server's names; the gate clamps each to its range whatever is asked).
 */
export const NUMBER_FIELDS: Record<NumberSetting, NumberField> = {
  temperature: { wire: "temperature", id: "temperature", min: 0, max: TEMPERATURE_MAX, whole: false, error: `Temperature must be a number from 0 to ${TEMPERATURE_MAX}.` },
  maxTokens: { wire: "max_tokens", id: "max-tokens", min: 1, max: MAX_TOKENS_MAX, whole: true, error: "Max tokens must be a whole number of at least 1." },
  topP: { wire: "top_p", id: "top-p", min: 0, max: 1, whole: false, error: "Top P must be a number from 0 to 1." },
  topK: { wire: "top_k", id: "top-k", min: 0, max: 1000, whole: true, error: "Top K must be a whole number from 0 to 1000." },
  minP: { wire: "min_p", id: "min-p", min: 0, max: 1, whole: false, error: "Min P must be a number from 0 to 1." },
  repeatPenalty: { wire: "repeat_penalty", id: "repeat-penalty", min: 0, max: 2, whole: false, error: "Repeat penalty must be a number from 0 to 2." },
};

const NUMBER_NAMES = Object.keys(NUMBER_FIELDS) as NumberSetting[];

/** Every field blank: the server's own choices. */
export function blankSettings(): SettingsInput {
  const input = { system: "" } as SettingsInput;
  for (const name of NUMBER_NAMES) input[name] = "";
  return input;
}

/** A stored or imported record's settings: each known field that is a string, the rest blank. */
export function settingsFrom(raw: Record<string, unknown>): SettingsInput {
  const input = blankSettings();
  for (const name of ["system", ...NUMBER_NAMES] as const) {
    const value = raw[name];
    if (typeof value === "string") input[name] = value;
  }
  return input;
}

/** The fields' text to settings; a value out of range is an error naming its field, not a guess. */
export function parseSettings(input: Partial<SettingsInput> & { system: string }): { settings: ChatSettings; errors: string[] } {
  const settings: ChatSettings = { system: input.system.trim() };
  const errors: string[] = [];
  for (const name of NUMBER_NAMES) {
    const text = (input[name] ?? "").trim();
    if (text === "") continue;
    const field = NUMBER_FIELDS[name];
    const value = Number(text);
    const fits = Number.isFinite(value) && value >= field.min && value <= field.max && (!field.whole || Number.isInteger(value));
    if (fits) settings[name] = value;
    else errors.push(field.error);
  }
  return { settings, errors };
}

/** The request body's fields for these settings (the system prompt goes in the messages). */
export function requestFields(settings: ChatSettings): Record<string, number> {
  const fields: Record<string, number> = {};
  for (const name of NUMBER_NAMES) {
    const value = settings[name];
    if (value !== undefined) fields[NUMBER_FIELDS[name].wire] = value;
  }
  return fields;
}

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`missing #${id}`);
  return node as T;
}

/** The settings panel: its labelled fields, opened and closed by the "Settings" button. */
export class SettingsPanel {
  private readonly panel = byId<HTMLFieldSetElement>("settings");
  private readonly toggle = byId<HTMLButtonElement>("settings-toggle");
  private readonly system = byId<HTMLTextAreaElement>("setting-system");
  private readonly numbers = Object.fromEntries(
    NUMBER_NAMES.map((name) => [name, byId<HTMLInputElement>(`setting-${NUMBER_FIELDS[name].id}`)]),
  ) as Record<NumberSetting, HTMLInputElement>;

  constructor() {
    this.toggle.addEventListener("click", () => {
      this.panel.hidden = !this.panel.hidden;
      this.toggle.setAttribute("aria-expanded", String(!this.panel.hidden));
      if (!this.panel.hidden) this.system.focus();
    });
  }

  /** The settings now, or the errors that keep a message from being sent. */
  read(): { settings: ChatSettings; errors: string[] } {
    return parseSettings(this.raw());
  }

  /** The fields' text, as stored with the conversation. */
  raw(): SettingsInput {
    const input = blankSettings();
    input.system = this.system.value;
    for (const name of NUMBER_NAMES) input[name] = this.numbers[name].value;
    return input;
  }

  write(input: SettingsInput): void {
    this.system.value = input.system;
    for (const name of NUMBER_NAMES) this.numbers[name].value = input[name] ?? "";
  }

  /** Call `listener` when a field changes (the conversation keeps its settings). */
  onInput(listener: () => void): void {
    this.panel.addEventListener("change", listener);
  }
}
