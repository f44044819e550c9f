// The browser client of VBase: gRPC-Web calls to the services with the user's Clerk token
// (generated from crates/proto/ with protoc-gen-es, sent with connect-web's gRPC-Web transport). The
// test page (index.html) exposes it as `window.vbase` for the browser tests to drive; the same
// calls are what the app makes after sign-in (StoreUser) and in a channel (WatchChannel).
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { IdentityService } from "../gen/vbase/identity/v1/identity_pb.js";
import { WorkspaceService } from "../gen/vbase/workspace/v1/workspace_pb.js";

type Settings = { identityUrl: string; workspaceUrl: string; token: string };

function clients(s: Settings) {
  const auth = { Authorization: `Bearer ${s.token}` };
  const identity = createClient(IdentityService, createGrpcWebTransport({ baseUrl: s.identityUrl }));
  const workspace = createClient(WorkspaceService, createGrpcWebTransport({ baseUrl: s.workspaceUrl }));
  return { identity, workspace, auth };
}

/// What the page saw of a channel: messages in arrival order and the last resume token.
const seen: { bodies: string[]; token: string; ended: string | null } = { bodies: [], token: "", ended: null };
let watching: AbortController | null = null;
let ws: { identity: Client<typeof IdentityService>; workspace: Client<typeof WorkspaceService>; auth: Record<string, string> } | null = null;

function show(text: string) {
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById("messages")?.appendChild(li);
}

export const vbase = {
  /// Signs in: StoreUser (the seed's StoreUserEffect). Returns the stored user's id, or the
  /// error a page sees (a refused CORS grant is a network error).
  async signIn(s: Settings): Promise<string> {
    ws = clients(s);
    try {
      const r = await ws.identity.storeUser({}, { headers: ws.auth });
      return r.user?.clerkId ?? "";
    } catch (e) {
      return `error: ${(e as Error).message}`;
    }
  },

  /// Watches a channel from `resumeToken` (empty: from now); resolves once caught up.
  async watch(channelId: string, resumeToken: string): Promise<string> {
    if (!ws) throw new Error("sign in first");
    watching = new AbortController();
    const stream = ws.workspace.watchChannel({ channelId, resumeToken }, { headers: ws.auth, signal: watching.signal });
    const it = stream[Symbol.asyncIterator]();
    for (;;) {
      const { value, done } = await it.next();
      if (done) return "ended";
      seen.token = value.resumeToken;
      if (value.event.case === "caughtUp") break;
      if (value.event.case === "messagePosted") {
        seen.bodies.push(value.event.value.body);
        show(value.event.value.body);
      }
    }
    (async () => {
      try {
        for (;;) {
          const { value, done } = await it.next();
          if (done) break;
          seen.token = value.resumeToken;
          if (value.event.case === "messagePosted") {
            seen.bodies.push(value.event.value.body);
            show(value.event.value.body);
          }
        }
      } catch (e) {
        seen.ended = (e as Error).message;
      }
    })();
    return seen.token;
  },

  /// Stops watching; returns the last resume token.
  stop(): string {
    watching?.abort();
    watching = null;
    return seen.token;
  },

  async post(channelId: string, body: string): Promise<void> {
    if (!ws) throw new Error("sign in first");
    await ws.workspace.postMessage({ channelId, body, requestId: crypto.randomUUID() }, { headers: ws.auth });
  },

  /// Liveblocks' auth callback as the app passes it to `createClient({ authEndpoint })`: the
  /// token for `roomId`, or the refusal Liveblocks' client takes as final.
  async liveblocksAuth(s: Settings, roomId: string): Promise<{ token: string } | { error: string; reason: string }> {
    const c = clients(s);
    try {
      const { token } = await c.workspace.authorizeLiveblocksRoom({ roomId }, { headers: c.auth });
      return { token };
    } catch (e) {
      const err = ConnectError.from(e);
      if (err.code === Code.PermissionDenied || err.code === Code.NotFound) {
        return { error: "forbidden", reason: err.rawMessage };
      }
      throw err;
    }
  },

  seen,
};

(window as unknown as { vbase: typeof vbase }).vbase = vbase;
