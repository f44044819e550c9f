// The local stack's console (served by `vbase-stack up`): two users side by side and the
// operator's view. Development tokens and the directory of users come from the stack's
// /dev/ helpers; everything else is the services' own gRPC-Web API.
import * as admin from "./admin.js";
import { button, el, report } from "./dom.js";
import { OperatorPane } from "./operator.js";
import { Pane, type Directory } from "./pane.js";

async function directory(): Promise<Directory> {
  const r = await fetch("/dev/directory");
  if (!r.ok) throw new Error(`directory: ${await r.text()}`);
  return r.json();
}

async function start() {
  const config = await (await fetch("/config")).json();
  admin.configure(config);
  const panes = [new Pane("pane-a", "User A", config.workspaceUrl), new Pane("pane-b", "User B", config.workspaceUrl)];
  const operator = new OperatorPane();
  const reload = async () => {
    const d = await directory();
    await Promise.all(panes.map((p) => p.update(d)));
  };
  document.getElementById("app")!.replaceChildren(
    el("p", {}, button("Reload users and workspaces", reload, "reload"), " ", el("span", { id: "log" })),
    el("div", { class: "users" }, ...panes.map((p) => p.root)),
    operator.root,
  );
  await reload();
  await operator.refresh();
  setInterval(() => operator.refresh(), 3000);
  document.body.dataset.ready = "yes";
}

start().catch(report);
