// Browser tests of the VBase client in headless Chromium (Debian's, driven by playwright-core;
// no browser download). Started by testing/e2e/tests/browser.rs, which runs the stack and passes:
// IDENTITY_URL, WORKSPACE_URL (gRPC ports, gRPC-Web), TOKEN_A, TOKEN_B (Clerk development
// tokens of two members), CHANNEL_ID, PAGE_PORT (served as http://localhost:PAGE_PORT, an allowed
// origin), OTHER_PORT (served as http://127.0.0.1:OTHER_PORT, not allowed), DOC_ROOM (a document's
// Liveblocks room in the members' workspace), FOREIGN_ROOM (a room of another workspace),
// TOKEN_REMOVED (a member removed after the token was issued), CHROMIUM.
// Prints one line per check; exits 1 on the first failure.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const settings = (token) => ({ identityUrl: env("IDENTITY_URL"), workspaceUrl: env("WORKSPACE_URL"), token });
const channel = env("CHANNEL_ID");

function serve(host, port) {
  const files = { "/": "index.html", "/index.html": "index.html", "/dist/page.js": "dist/page.js" };
  const server = http.createServer((req, res) => {
    const file = files[req.url];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/html" });
    res.end(fs.readFileSync(path.join(here, file)));
  });
  return new Promise((ok) => server.listen(Number(port), host, () => ok(server)));
}

function check(what, ok, detail = "") {
  console.log(`${ok ? "ok" : "FAILED"}: ${what}${detail ? ` (${detail})` : ""}`);
  if (!ok) process.exit(1);
}

async function until(page, predicate, arg, what) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: 10_000 });
  } catch {
    check(what, false, "not within 10 s");
  }
}

const servers = [await serve("localhost", env("PAGE_PORT")), await serve("127.0.0.1", env("OTHER_PORT"))];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  const open = async (origin) => {
    const page = await browser.newPage();
    await page.goto(`${origin}/index.html`);
    await page.waitForFunction(() => window.vbase !== undefined);
    return page;
  };
  const allowed = `http://localhost:${env("PAGE_PORT")}`;
  const a = await open(allowed);
  const b = await open(allowed);

  // Sign-in: StoreUser from the page with the user's token.
  const who = await a.evaluate((s) => window.vbase.signIn(s), settings(env("TOKEN_A")));
  check("user A's page stores A with StoreUser over gRPC-Web", who === "user_browser_a", who);
  const whoB = await b.evaluate((s) => window.vbase.signIn(s), settings(env("TOKEN_B")));
  check("user B's page stores B", whoB === "user_browser_b", whoB);

  // B watches; A posts; B's page shows it live.
  await b.evaluate((c) => window.vbase.watch(c, ""), channel);
  await a.evaluate((c) => window.vbase.post(c, "hello from A"), channel);
  await until(b, () => document.getElementById("messages").textContent.includes("hello from A"), null, "B sees A's message live");
  check("B sees A's message live", true);

  // B's connection breaks; A posts twice; B resumes with its token and misses nothing.
  const token = await b.evaluate(() => window.vbase.stop());
  await a.evaluate((c) => window.vbase.post(c, "while away 1"), channel);
  await a.evaluate((c) => window.vbase.post(c, "while away 2"), channel);
  await b.evaluate(([c, t]) => window.vbase.watch(c, t), [channel, token]);
  await a.evaluate((c) => window.vbase.post(c, "after the return"), channel);
  await until(b, () => window.vbase.seen.bodies.includes("after the return"), null, "B resumes");
  const bodies = await b.evaluate(() => window.vbase.seen.bodies);
  check(
    "B resumed with its token: every message once, in order",
    JSON.stringify(bodies) === JSON.stringify(["hello from A", "while away 1", "while away 2", "after the return"]),
    JSON.stringify(bodies),
  );

  // Liveblocks' auth callback: a token for a document of A's workspace, none for another
  // workspace's room, none for a member removed after their token.
  const auth = (token, room) => a.evaluate(([s, r]) => window.vbase.liveblocksAuth(s, r), [settings(token), room]);
  const granted = await auth(env("TOKEN_A"), env("DOC_ROOM"));
  check("A's page gets a Liveblocks token for its workspace's document", typeof granted.token === "string" && granted.token.length > 0, JSON.stringify(Object.keys(granted)));
  const foreign = await auth(env("TOKEN_A"), env("FOREIGN_ROOM"));
  check("another workspace's room is refused", foreign.error === "forbidden", JSON.stringify(foreign));
  const removed = await auth(env("TOKEN_REMOVED"), env("DOC_ROOM"));
  check("a removed member is refused", removed.error === "forbidden" && removed.reason.includes("removed"), JSON.stringify(removed));

  // A page of another origin gets no CORS grant: the browser refuses it the answer.
  const other = await open(`http://127.0.0.1:${env("OTHER_PORT")}`);
  const refused = await other.evaluate((s) => window.vbase.signIn(s), settings(env("TOKEN_A")));
  check("a page of a disallowed origin is refused by CORS", refused.startsWith("error:"), refused);
} finally {
  await browser.close();
  servers.forEach((s) => s.close());
}
