/**
 * The page's reads of the broker's JSON documents (`v1/models`, `v1/usage`), each as the logged-in
 * user (the session cookie). A read that fails leaves what the page shows as it was: the next read
 * (a reply settling, a poll while one waits) tries again.
 */

/** The JSON body of `GET url`, null for a body that is not JSON; undefined where the broker could not
 * be reached or answered an error. */
export async function getJson(url: string): Promise<unknown> {
  let answer: Response;
  try {
    answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch {
    return undefined;
  }
  if (!answer.ok) return undefined;
  return answer.json().catch(() => null);
}

/**
 * A reader of one document whose reads may overlap (a poll's and a settled reply's): a loaded box can
 * answer them out of order, so an answer older than the last one delivered comes back as undefined,
 * as a failed read does. Without it a stale "not loaded" landed after "ready" and stayed.
 */
export function latestJson(url: string): () => Promise<unknown> {
  let asked = 0;
  let delivered = 0;
  return async () => {
    const ticket = ++asked;
    const body = await getJson(url);
    if (body === undefined || ticket < delivered) return undefined;
    delivered = ticket;
    return body;
  };
}
