// Drives a confab edge with the official socket.io-client (CONTRACT §1).
// Usage: CONFAB_URL=http://127.0.0.1:PORT ALICE=<jwt> BOB=<jwt> CAROL=<jwt> node compat.mjs
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const url = process.env.CONFAB_URL;
const tokens = { alice: process.env.ALICE, bob: process.env.BOB, carol: process.env.CAROL };
assert.ok(url && tokens.alice && tokens.bob && tokens.carol, "CONFAB_URL, ALICE, BOB and CAROL must be set");

const deadline = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms).unref());
const within = (p, what, ms = 5000) => Promise.race([p, deadline(ms, what)]);
const once = (socket, event) => within(new Promise((r) => socket.once(event, r)), event);
const ack = (socket, event, payload) => within(socket.timeout(5000).emitWithAck(event, payload), event);

function connect(user, opts = {}) {
  const socket = io(url, { auth: { token: tokens[user] }, reconnection: false, ...opts });
  const ready = once(socket, "session:ready");
  return { socket, ready };
}

let passed = 0;
async function step(name, fn) {
  await fn();
  passed += 1;
  console.log(`ok - ${name}`);
}

const res = await fetch(`${url}/v1/chats`, {
  method: "POST",
  headers: { authorization: `Bearer ${tokens.alice}`, "content-type": "application/json" },
  body: JSON.stringify({ type: "group", title: "compat", memberIds: ["bob"] }),
});
assert.equal(res.status, 201);
const chat = await res.json();

const alice = connect("alice", { transports: ["websocket"] });
const bob = connect("bob"); // long-polling first, then the upgrade
let bobSocket = bob.socket;

await step("connect with a token and get session:ready", async () => {
  const [a, b] = await Promise.all([alice.ready, bob.ready]);
  assert.equal(a.userId, "alice");
  assert.equal(b.userId, "bob");
  assert.deepEqual(b.chats.map((c) => c.chatId), [chat.id]);
});

await step("join, send with ack, receive on another socket", async () => {
  const join = await ack(bobSocket, "room:join", { chatId: chat.id });
  assert.equal(join.ok, true);
  const received = once(bobSocket, "message:new");
  const sent = await ack(alice.socket, "message:send", { chatId: chat.id, body: "hello", clientId: "m1" });
  assert.equal(sent.ok, true);
  assert.equal(sent.data.seq, 1);
  assert.equal(sent.data.clientId, "m1");
  const msg = await received;
  assert.equal(msg.seq, 1);
  assert.equal(msg.body, "hello");
  assert.equal(msg.senderId, "alice");
  assert.equal(msg.id, sent.data.serverId);
});

await step("errors come back in the ack", async () => {
  const bad = await ack(alice.socket, "message:send", { chatId: chat.id, body: "", clientId: "x" });
  assert.equal(bad.ok, false);
  assert.equal(bad.error, "VALIDATION_ERROR");
  assert.match(bad.correlationId, /^[0-9a-f-]{36}$/);
});

await step("disconnect, miss messages, reconnect with sinceSeq", async () => {
  bobSocket.disconnect();
  for (const i of [2, 3, 4]) {
    const r = await ack(alice.socket, "message:send", { chatId: chat.id, body: `m${i}`, clientId: `m${i}` });
    assert.equal(r.data.seq, i);
  }
  const again = connect("bob", { transports: ["polling"] });
  bobSocket = again.socket;
  await again.ready;
  const join = await ack(bobSocket, "room:join", { chatId: chat.id, sinceSeq: 1 });
  assert.equal(join.ok, true);
  assert.deepEqual(join.data.missed.map((m) => m.seq), [2, 3, 4]);
  assert.deepEqual(join.data.missed.map((m) => m.body), ["m2", "m3", "m4"]);
  assert.equal(join.data.hasMore, false);
  assert.equal(join.data.lastSeq, 4);
  // Live delivery resumes on the recovered socket.
  const received = once(bobSocket, "message:new");
  await ack(alice.socket, "message:send", { chatId: chat.id, body: "m5", clientId: "m5" });
  assert.equal((await received).seq, 5);
});

await step("a refused handshake is a connect_error with code and reason", async () => {
  const socket = io(url, { auth: { token: "not-a-token" }, reconnection: false });
  const err = await once(socket, "connect_error");
  assert.equal(err.message, "UNAUTHORIZED");
  assert.deepEqual(err.data, { code: "UNAUTHORIZED", reason: "invalid_token" });
  socket.close();
});

await step("an attachment and the sender's profile round-trip, and a bad attachment is refused by field", async () => {
  const attachment = { url: "https://cdn.example/cat.png", type: "image/png", name: "cat.png", size: 48213, width: 640, height: 480 };
  const received = once(bobSocket, "message:new");
  const sent = await ack(alice.socket, "message:send", { chatId: chat.id, body: "", clientId: "att1", attachments: [attachment] });
  assert.equal(sent.ok, true);
  const msg = await received;
  assert.deepEqual(msg.attachments, [attachment]);
  assert.equal(msg.body, "");
  assert.deepEqual(msg.sender, { id: "alice", name: "Alice", avatarUrl: "https://cdn.example/alice.png" });
  const bad = await ack(alice.socket, "message:send", {
    chatId: chat.id, body: "x", clientId: "att2", attachments: [{ url: "javascript:alert(1)", type: "image/png" }],
  });
  assert.equal(bad.error, "VALIDATION_ERROR");
  assert.match(bad.message, /^attachments\[0\]\.url /);
});

await step("edit, react and delete reach the other member", async () => {
  const sent = await ack(alice.socket, "message:send", { chatId: chat.id, body: "draft", clientId: "e1" });
  const id = sent.data.serverId;
  const updated = once(bobSocket, "message:updated");
  const edit = await ack(alice.socket, "message:edit", { chatId: chat.id, messageId: id, body: "final" });
  assert.equal(edit.ok, true);
  assert.equal((await updated).body, "final");
  const reacted = once(bobSocket, "reaction:update");
  assert.equal((await ack(alice.socket, "reaction:add", { chatId: chat.id, messageId: id, emoji: "🎉" })).ok, true);
  assert.deepEqual((await reacted).counts, { "🎉": 1 });
  const deleted = once(bobSocket, "message:deleted");
  assert.equal((await ack(alice.socket, "message:delete", { chatId: chat.id, messageId: id })).ok, true);
  assert.equal((await deleted).messageId, id);
});

await step("typing goes to the other member, not back to the typist", async () => {
  let echoed = false;
  alice.socket.on("typing:update", () => (echoed = true));
  const started = once(bobSocket, "typing:update");
  alice.socket.emit("typing:start", { chatId: chat.id });
  assert.deepEqual(await started, { chatId: chat.id, userId: "alice", state: "start" });
  const stopped = once(bobSocket, "typing:update");
  alice.socket.emit("typing:stop", { chatId: chat.id });
  assert.equal((await stopped).state, "stop");
  assert.equal(echoed, false);
});

await step("read receipts move the cursor and reach the chat", async () => {
  const receipt = once(alice.socket, "receipt:update");
  const read = await ack(bobSocket, "receipt:read", { chatId: chat.id, seq: 5 });
  assert.equal(read.ok, true);
  assert.equal(read.data.lastReadSeq, 5);
  const r = await receipt;
  assert.equal(r.userId, "bob");
  assert.equal(r.seq, 5);
});

await step("presence: subscribe, status changes, room members", async () => {
  const snap = await ack(bobSocket, "presence:subscribe", { userIds: ["alice"] });
  assert.equal(snap.ok, true);
  assert.equal(snap.data.presence[0].status, "online");
  const update = once(bobSocket, "presence:update");
  assert.deepEqual((await ack(alice.socket, "presence:set", { status: "busy" })).data, { status: "busy" });
  const u = await within(update, "presence:update", 8000);
  assert.equal(u.userId, "alice");
  assert.equal(u.status, "busy");
  const members = await ack(bobSocket, "room:members", { chatId: chat.id });
  const a = members.data.members.find((m) => m.userId === "alice");
  assert.equal(a.role, "admin");
  assert.equal(a.status, "busy");
});

await step("chat management: a new member's socket receives at once, a removed one stops", async () => {
  const carol = connect("carol");
  await carol.ready;
  const update = once(carol.socket, "chat:update");
  const add = await fetch(`${url}/v1/chats/${chat.id}/members`, {
    method: "POST",
    headers: { authorization: `Bearer ${tokens.alice}`, "content-type": "application/json" },
    body: JSON.stringify({ userIds: ["carol"] }),
  });
  assert.equal(add.status, 200);
  assert.deepEqual((await update).chat.memberIds, ["alice", "bob", "carol"]);
  const received = once(carol.socket, "message:new");
  await ack(alice.socket, "message:send", { chatId: chat.id, body: "welcome carol", clientId: "w1" });
  assert.equal((await received).body, "welcome carol");
  const removed = once(carol.socket, "chat:update");
  const del = await fetch(`${url}/v1/chats/${chat.id}/members/carol`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${tokens.alice}` },
  });
  assert.equal(del.status, 200);
  assert.deepEqual((await removed).chat.memberIds, ["alice", "bob"]);
  let leaked = false;
  carol.socket.on("message:new", () => (leaked = true));
  await ack(alice.socket, "message:send", { chatId: chat.id, body: "carol is gone", clientId: "w2" });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(leaked, false);
  const refused = await ack(carol.socket, "message:send", { chatId: chat.id, body: "x", clientId: "c1" });
  assert.equal(refused.error, "FORBIDDEN");
  carol.socket.close();
});

alice.socket.close();
bobSocket.close();
console.log(`compat: ${passed} passed, 0 failed`);
process.exit(0);
