/**
 * Regenerate keeps the earlier answer as a branch to flip back to (`‹ 1/2 ›`), as llama.cpp's web UI
 * does. Pure: each function takes the conversation's turns and returns new ones, so the page only
 * re-renders what it is given and the store keeps branches inside the turn they belong to.
 */
import type { Branch, TurnData } from "./conversation.ts";

const LIVE: Branch = { reply: "", later: [] };

/** The turns with turn `index`'s live answer (and what followed it) kept as a branch, and a new, empty
 * answer to fill. An answer that failed before any text, with nothing after it, is not worth keeping. */
export function forkAt(turns: readonly TurnData[], index: number): TurnData[] {
  const turn = turns[index];
  if (turn === undefined) return [...turns];
  const later = turns.slice(index + 1);
  const head = turns.slice(0, index);
  if (turn.reply === "" && later.length === 0) return [...head, { ...turn, reply: "" }];
  const kept: Branch = { reply: turn.reply, later };
  const branches = turn.branches === undefined ? [kept] : turn.branches.map((each, at) => (at === turn.branch ? kept : each));
  return [...head, { ...turn, reply: "", branches: [...branches, LIVE], branch: branches.length }];
}

/** The turns with turn `index` showing its branch `target` (the live one kept in its place). */
export function flipTo(turns: readonly TurnData[], index: number, target: number): TurnData[] {
  const turn = turns[index];
  if (turn?.branches === undefined || turn.branch === undefined || target === turn.branch) return [...turns];
  const chosen = turn.branches[target];
  if (chosen === undefined) return [...turns];
  const kept: Branch = { reply: turn.reply, later: turns.slice(index + 1) };
  const branches = turn.branches.map((each, at) => (at === turn.branch ? kept : at === target ? LIVE : each));
  return [...turns.slice(0, index), { ...turn, reply: chosen.reply, branches, branch: target }, ...chosen.later];
}

/** Where a turn stands among its answers, for the switcher: null when it has only one. */
export function branchPosition(turn: TurnData): { index: number; count: number } | null {
  if (turn.branches === undefined || turn.branch === undefined || turn.branches.length < 2) return null;
  return { index: turn.branch, count: turn.branches.length };
}
