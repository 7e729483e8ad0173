// Unit tests of shardq.js against a scripted node (a fake WebSocket): the
// handshake, resume without duplicates, gaps from resumes and notices,
// queue/* resubscription, and what becomes of publishes when connections
// drop. Run: node --test clients/js/test/shardq.test.js (Node 20+);
// tests/tests/js_client.rs runs it under cargo test. The real browser and
// real nodes are tests/tests/browser.rs's.

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

/** A WebSocket whose far end the test plays. */
class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000, reason = "") {
    this.drop(code, reason);
  }

  /** The node sends a frame. */
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The connection ends with `code`. */
  drop(code, reason = "") {
    if (this.closed !== null) return;
    this.closed = code;
    this.onclose?.({ code, reason });
  }

  /** The last frame the client sent. */
  last() {
    return this.sent[this.sent.length - 1];
  }
}

globalThis.WebSocket = FakeSocket;
// What browsers and Node 20 have, for Node 18 (Debian 12's).
globalThis.crypto ??= (await import("node:crypto")).webcrypto;
globalThis.CustomEvent ??= class extends Event {
  constructor(type, options) {
    super(type);
    this.detail = options?.detail;
  }
};
const { Publisher, Subscriber } = await import("../shardq.js");

const NONCE = "00".repeat(32);
const FAST = { initialMs: 1, maxMs: 2 };

/** Polls `check` (every macrotask, at most ~2 s) until it is truthy. */
async function until(check, what) {
  for (let i = 0; i < 2000; i += 1) {
    const value = check();
    if (value) return value;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  throw new Error(`never: ${what}`);
}

/** Waits for socket number `n` and completes its handshake. */
async function open(n) {
  const socket = await until(() => FakeSocket.all[n], `socket ${n}`);
  socket.deliver({ type: "hello", version: "shardq/1", node: `node-${n}`, nonce: NONCE });
  await until(() => socket.sent.length === 1, "the auth frame");
  socket.deliver({ type: "welcome", proof: "" });
  return socket;
}

let clients = [];
afterEach(() => {
  for (const client of clients) client.close();
  clients = [];
  FakeSocket.all = [];
});

function subscriber(options = {}) {
  const client = new Subscriber({ urls: ["ws://a:1", "ws://b:2/v1/subscribe"], token: "t", backoff: FAST, ...options });
  clients.push(client);
  return client;
}

test("the handshake presents the token, no proof, and goes to the next URL after a drop", async () => {
  const states = [];
  const client = subscriber({ token: async () => "fresh-token", name: "page", onstate: (s) => states.push(s) });
  const first = await open(0);
  assert.equal(first.url, "ws://a:1/v1/subscribe");
  const auth = first.sent[0];
  assert.equal(auth.type, "auth");
  assert.match(auth.nonce, /^[0-9a-f]{64}$/);
  assert.equal(auth.token, "fresh-token");
  assert.equal(auth.node, "page");
  assert.equal(auth.proof, undefined);
  assert.equal(client.state, "open");
  first.drop(1006);
  const second = await open(1);
  assert.equal(second.url, "ws://b:2/v1/subscribe");
  assert.deepEqual(states, ["connecting", "open", "closed", "connecting", "open"]);
});

test("an auth failure is reported, then retried", async () => {
  const details = [];
  subscriber({ onstate: (state, detail) => details.push({ state, ...detail }) });
  const socket = await until(() => FakeSocket.all[0], "a socket");
  socket.deliver({ type: "hello", version: "shardq/1", node: "n", nonce: NONCE });
  socket.deliver({ type: "error", code: "auth_failed", message: "authentication failed" });
  socket.drop(4001);
  const closed = details.find((d) => d.state === "closed");
  assert.equal(closed.error.code, "auth_failed");
  assert.equal(closed.code, 4001);
  assert.ok(closed.retryInMs >= 0);
  await until(() => FakeSocket.all[1], "a second attempt");
});

test("messages arrive once, and a reconnection resumes from the last one", async () => {
  const client = subscriber();
  const events = [];
  const subscription = client.subscribe("database", "create", (event) => events.push(event));
  let socket = await open(0);
  const subscribe = await until(() => socket.sent[1], "the subscribe");
  assert.deepEqual(subscribe, { type: "subscribe", topic: "database/create", id: subscribe.id });
  socket.deliver({ type: "ack", id: subscribe.id, topics: [{ topic: "database/create", epoch: 7, offset: 3 }] });
  assert.equal((await subscription.ready).type, "subscribed");
  for (const offset of [3, 4, 5, 5, 4]) {
    socket.deliver({ type: "message", topic: "database/create", epoch: 7, offset, payload: { offset } });
  }
  socket.drop(1001);
  socket = await open(1);
  const resume = await until(() => socket.sent[1], "the resume");
  assert.deepEqual(resume.since, { epoch: 7, offset: 5 });
  socket.deliver({ type: "ack", id: resume.id, topics: [{ topic: "database/create", epoch: 7, offset: 6 }], recovered: true, replay: { epoch: 7, offset: 5 } });
  socket.deliver({ type: "message", topic: "database/create", epoch: 7, offset: 6, payload: 6 });
  const messages = events.filter((e) => e.type === "message").map((e) => e.offset);
  assert.deepEqual(messages, [4, 5, 6]);
  assert.equal(events.filter((e) => e.type === "gap").length, 0);
  assert.deepEqual(subscription.position(), { epoch: 7, offset: 6 });
});

test("a resume the history no longer covers is a gap; one beyond the end is not", async () => {
  const client = subscriber();
  const events = [];
  client.subscribe("database", "create", { since: { epoch: 7, offset: 5 } }, (e) => events.push(e));
  client.subscribe("database", "update", { since: { epoch: 7, offset: 10 } }, (e) => events.push(e));
  const socket = await open(0);
  const [create, update] = await until(() => socket.sent.length === 3 && socket.sent.slice(1), "both");
  assert.deepEqual(create.since, { epoch: 7, offset: 5 });
  // Another epoch: the owner restarted without its history.
  socket.deliver({ type: "ack", id: create.id, topics: [{ topic: "database/create", epoch: 9, offset: 0 }], recovered: false, replay: { epoch: 9, offset: 0 } });
  socket.deliver({ type: "message", topic: "database/create", epoch: 9, offset: 1, payload: 1 });
  // A since beyond the topic's latest offset: nothing missed.
  socket.deliver({ type: "ack", id: update.id, topics: [{ topic: "database/update", epoch: 7, offset: 8 }], recovered: false, replay: { epoch: 7, offset: 8 } });
  socket.deliver({ type: "message", topic: "database/update", epoch: 7, offset: 9, payload: 9 });
  const gaps = events.filter((e) => e.type === "gap");
  assert.deepEqual(gaps, [{ type: "gap", topic: "database/create", after: { epoch: 7, offset: 5 }, epoch: 9, offset: 0, reason: "resume" }]);
  const messages = events.filter((e) => e.type === "message").map((e) => `${e.topic}@${e.offset}`);
  assert.deepEqual(messages, ["database/create@1", "database/update@9"]);
});

test("a gap notice moves the position; stalled and resumed pass through", async () => {
  const client = subscriber();
  const events = [];
  const subscription = client.subscribe("database", "create", (e) => events.push(e));
  const socket = await open(0);
  const subscribe = await until(() => socket.sent[1], "the subscribe");
  socket.deliver({ type: "ack", id: subscribe.id, topics: [{ topic: "database/create", epoch: 7, offset: 2 }] });
  socket.deliver({ type: "stalled", topic: "database/create", owner: "consumer-0" });
  socket.deliver({ type: "resumed", topic: "database/create" });
  socket.deliver({ type: "gap", topic: "database/create", after: { epoch: 7, offset: 2 }, epoch: 9, offset: 0 });
  socket.deliver({ type: "message", topic: "database/create", epoch: 9, offset: 1, payload: 1 });
  assert.deepEqual(events.map((e) => e.type), ["subscribed", "stalled", "resumed", "gap", "message"]);
  assert.equal(events[3].reason, "notice");
  assert.deepEqual(subscription.position(), { epoch: 9, offset: 1 });
});

test("queue/* resumes each of its topics from its own position", async () => {
  const client = subscriber();
  const subscription = client.subscribe("database", "*", () => {});
  let socket = await open(0);
  const subscribe = await until(() => socket.sent[1], "the subscribe");
  assert.equal(subscribe.topic, "database/*");
  socket.deliver({ type: "ack", id: subscribe.id, topics: [{ topic: "database/create", epoch: 7, offset: 3 }, { topic: "database/read", epoch: 8, offset: 1 }] });
  socket.deliver({ type: "message", topic: "database/read", epoch: 8, offset: 2, payload: 2 });
  assert.deepEqual(subscription.position("database/read"), { epoch: 8, offset: 2 });
  socket.drop(1006);
  socket = await open(1);
  const resumes = await until(() => socket.sent.length === 3 && socket.sent.slice(1), "two resumes");
  assert.deepEqual(
    resumes.map((r) => [r.topic, r.since]),
    [["database/create", { epoch: 7, offset: 3 }], ["database/read", { epoch: 8, offset: 2 }]],
  );
  assert.throws(() => client.subscribe("database", "read", () => {}), { code: "already_subscribed" });
});

test("publishes: acks, refusals, and what a dropped connection means", async () => {
  const publisher = new Publisher({ urls: ["ws://p:1"], token: "t", backoff: FAST });
  clients.push(publisher);
  const early = publisher.publish("database", "create", { id: 1 }, { key: "k-1" });
  let socket = await open(0);
  const first = await until(() => socket.sent[1], "the publish sent once open");
  assert.deepEqual(first, { type: "publish", id: first.id, topic: "database/create", key: "k-1", payload: { id: 1 } });
  socket.deliver({ type: "ack", id: first.id, epoch: 7, offset: 1, duplicate: true });
  assert.deepEqual(await early, { epoch: 7, offset: 1, duplicate: true });

  const refused = publisher.publish("files", "save", 2);
  const second = await until(() => socket.sent[2], "the second publish");
  socket.deliver({ type: "error", id: second.id, code: "not_authorized", message: "no" });
  await assert.rejects(refused, { code: "not_authorized" });

  // A drop with a publish in flight: its outcome is unknown.
  const lost = publisher.publish("database", "create", 3);
  await until(() => socket.sent[3], "the third publish");
  socket.drop(1006);
  await assert.rejects(lost, { code: "outcome_unknown" });

  // Going away (1001): it was never read, so it goes again on the next connection.
  socket = await open(1);
  const resent = publisher.publish("database", "create", 4);
  const fourth = await until(() => socket.sent[1], "the fourth publish");
  socket.drop(1001);
  socket = await open(2);
  const again = await until(() => socket.sent[1], "the fourth publish again");
  assert.deepEqual(again.payload, 4);
  assert.notEqual(again.id, fourth.id);
  socket.deliver({ type: "ack", id: again.id, epoch: 7, offset: 4 });
  assert.deepEqual(await resent, { epoch: 7, offset: 4, duplicate: false });

  await assert.rejects(publisher.publish("bad topic", "x", 1), { code: "bad_topic" });
});
