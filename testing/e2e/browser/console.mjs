// The local stack's console in headless Chromium (Debian's, driven by playwright-core). Started
// by testing/e2e/tests/console.rs, which runs `vbase-stack up`, sends samples and passes:
// CONSOLE_URL (the page the stack serves), USER_A, USER_B (members of ORG, named ORG_NAME),
// QUARANTINED (the svix-id of a malformed delivery), CHROMIUM.
// Prints one line per check; exits 1 on the first failure.
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

function check(what, ok, detail = "") {
  console.log(`${ok ? "ok" : "FAILED"}: ${what}${detail ? ` (${detail})` : ""}`);
  if (!ok) process.exit(1);
}

async function until(page, predicate, arg, what, timeout = 10_000) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 20 });
  } catch {
    check(what, false, `not within ${timeout} ms`);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  await page.goto(env("CONSOLE_URL"));
  await until(page, () => document.body.dataset.ready === "yes", null, "the console loads");

  // Pick each pane's user; their workspace, created by send-sample, is listed by name.
  const open = async (pane, user) => {
    await page.selectOption(`#${pane} .user`, user);
    await until(
      page,
      ([p, name]) => [...document.querySelectorAll(`#${p} .workspace option`)].some((o) => o.textContent.includes(name)),
      [pane, env("ORG_NAME")],
      `${pane} lists ${env("ORG_NAME")}`,
    );
    await page.selectOption(`#${pane} .workspace`, env("ORG"));
    await until(page, (p) => document.querySelector(`#${p} .status`).textContent === "watching live", pane, `${pane} watches #general`);
  };
  await open("pane-a", env("USER_A"));
  check("the console lists the workspace send-sample created, by name", true);
  await open("pane-b", env("USER_B"));

  // B posts; A's pane shows it live within a second.
  await page.fill("#pane-b .body", "hello from B");
  const started = Date.now();
  await page.click("#pane-b .send");
  await until(page, () => document.querySelector("#pane-a .messages").textContent.includes("hello from B"), null, "A sees B's message within 1 s", 1_000);
  check("A's pane shows B's message within 1 s", true, `${Date.now() - started} ms`);

  // The operator pane lists the malformed delivery; replay keeps it (still malformed), discard ends it.
  const id = env("QUARANTINED");
  const row = `#quarantine tr:has(code:text-is("${id}"))`;
  await until(page, (i) => document.getElementById("quarantine").textContent.includes(i), id, "the operator pane shows the quarantined delivery");
  check("the operator pane shows the quarantined delivery", true, id);
  await page.click(`${row} button:text-is("Replay")`);
  await until(page, (i) => document.getElementById("operator-result").textContent.includes(i), id, "replay reports on the delivery");
  check("replay runs the gateway's replay of that delivery", true, (await page.textContent("#operator-result")).trim().split("\n").slice(-1)[0]);
  await page.click(`${row} button:text-is("Discard")`);
  await until(page, (i) => !document.getElementById("quarantine").textContent.includes(i), id, "the discarded delivery leaves the open quarantine");
  check("discard removes it from the open quarantine", true);
  await until(page, () => document.getElementById("sync").textContent.includes("upsert_workspace"), null, "sync status lists upsert_workspace");
  check("the sync status lists the commands applied", true);
} finally {
  await browser.close();
}
