// The seed stack, as a benchmark peer (not part of confab): a plain
// socket.io 4 server implementing the benchmark subset of confab's client
// contract, the way a team would start before confab. With REDIS_URL it runs
// behind @socket.io/redis-adapter and keeps chats, seqs, history and client
// ids in Redis, so several processes serve the same chats; without it, one
// process keeps everything in memory.
//
// Subset: POST /v1/chats; CONNECT with a JWT (HS256) in the auth payload;
// auto-join of the user's chats and session:ready; room:join { chatId,
// sinceSeq } with missed messages; message:send with idempotent client ids;
// message:new to the chat's room, the sender included.
//
// Env: PORT (4000), HOST (127.0.0.1), CONFAB_JWT_SECRET (required), REDIS_URL.

import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";

const PORT = Number(process.env.PORT ?? 4000);
const HOST = process.env.HOST ?? "127.0.0.1";
const SECRET = process.env.CONFAB_JWT_SECRET;
const REDIS_URL = process.env.REDIS_URL;
const HISTORY = 10000;
if (!SECRET) {
  console.error("CONFAB_JWT_SECRET is required");
  process.exit(2);
}

const now = () => new Date().toISOString();
const failure = (error, message) => ({ ok: false, error, message, correlationId: randomUUID() });

function userOf(token) {
  try {
    const claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
    if (typeof claims.exp !== "number") return { reason: "invalid_token" };
    return { user: claims.sub ?? claims.userId };
  } catch (e) {
    return { reason: e.name === "TokenExpiredError" ? "expired_token" : "invalid_token" };
  }
}

// Messages after `since`, at most 100, from a history whose seqs are contiguous.
function page(history, since) {
  if (since === undefined || history.length === 0) return { missed: [], hasMore: false };
  const start = Math.max(0, since + 1 - history[0].seq);
  const missed = history.slice(start, start + 100);
  return { missed, hasMore: start + 100 < history.length };
}

// One process: everything in Maps.
class MemoryState {
  chats = new Map(); // id -> { chat, lastSeq, history, sent }
  userChats = new Map();
  dmPairs = new Map();

  async dmChat(key) {
    return this.dmPairs.get(key);
  }
  async saveChat(chat, dmKey) {
    this.chats.set(chat.id, { chat, lastSeq: 0, history: [], sent: new Map() });
    if (dmKey) this.dmPairs.set(dmKey, chat);
    for (const m of chat.memberIds) {
      if (!this.userChats.has(m)) this.userChats.set(m, []);
      this.userChats.get(m).push(chat.id);
    }
  }
  async chatsOf(user) {
    return this.userChats.get(user) ?? [];
  }
  async chat(id) {
    const c = this.chats.get(id);
    return c && { members: c.chat.memberIds, lastSeq: c.lastSeq };
  }
  async send(chatId, user, body, clientId) {
    const c = this.chats.get(chatId);
    const key = `${user}\u0000${clientId}`;
    const known = c.sent.get(key);
    if (known) return { data: known, duplicate: true };
    c.lastSeq += 1;
    const message = { chatId, id: randomUUID(), seq: c.lastSeq, senderId: user, body, createdAt: now(), clientId };
    c.history.push(message);
    if (c.history.length > HISTORY) c.history.shift();
    const data = { clientId, serverId: message.id, seq: message.seq, createdAt: message.createdAt };
    c.sent.set(key, data);
    return { data, message, duplicate: false };
  }
  async missed(chatId, since) {
    return page(this.chats.get(chatId).history, since);
  }
}

// Several processes: the state in Redis, the broadcasts through the adapter.
class RedisState {
  constructor(redis) {
    this.r = redis;
  }
  async dmChat(key) {
    const json = await this.r.get(`dm:${key}`);
    return json && JSON.parse(json);
  }
  async saveChat(chat, dmKey) {
    const m = this.r.multi().set(`chat:${chat.id}`, JSON.stringify(chat)).set(`seq:${chat.id}`, 0);
    if (dmKey) m.set(`dm:${dmKey}`, JSON.stringify(chat));
    for (const u of chat.memberIds) m.sAdd(`user:${u}:chats`, chat.id);
    await m.exec();
  }
  async chatsOf(user) {
    return this.r.sMembers(`user:${user}:chats`);
  }
  async chat(id) {
    const [json, seq] = await Promise.all([this.r.get(`chat:${id}`), this.r.get(`seq:${id}`)]);
    return json && { members: JSON.parse(json).memberIds, lastSeq: Number(seq ?? 0) };
  }
  async send(chatId, user, body, clientId) {
    const key = `sent:${chatId}:${user}:${clientId}`;
    const known = await this.r.get(key);
    if (known) return { data: JSON.parse(known), duplicate: true };
    const seq = await this.r.incr(`seq:${chatId}`);
    const message = { chatId, id: randomUUID(), seq, senderId: user, body, createdAt: now(), clientId };
    const data = { clientId, serverId: message.id, seq, createdAt: message.createdAt };
    await this.r
      .multi()
      .rPush(`hist:${chatId}`, JSON.stringify(message))
      .lTrim(`hist:${chatId}`, -HISTORY, -1)
      .set(key, JSON.stringify(data), { EX: 86400 })
      .exec();
    return { data, message, duplicate: false };
  }
  async missed(chatId, since) {
    if (since === undefined) return { missed: [], hasMore: false };
    const [len, last] = await Promise.all([this.r.lLen(`hist:${chatId}`), this.r.get(`seq:${chatId}`)]);
    const first = Number(last ?? 0) - len + 1;
    const start = Math.max(0, since + 1 - first);
    const rows = await this.r.lRange(`hist:${chatId}`, start, start + 99);
    return { missed: rows.map((r) => JSON.parse(r)), hasMore: start + 100 < len };
  }
}

const server = http.createServer();
const io = new Server(server, { transports: ["polling", "websocket"] });
let state = new MemoryState();

if (REDIS_URL) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const data = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect(), data.connect()]);
  io.adapter(createAdapter(pub, sub));
  state = new RedisState(data);
}

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function createChat(req, res, body) {
  const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
  const { user } = userOf(token);
  if (!user) return json(res, 401, failure("UNAUTHORIZED", "missing or invalid token"));
  if (!["group", "dm"].includes(body.type) || !Array.isArray(body.memberIds)) {
    return json(res, 400, failure("VALIDATION_ERROR", "type group or dm, memberIds an array"));
  }
  const memberIds = [user, ...new Set(body.memberIds.filter((m) => typeof m === "string" && m !== user))];
  if (body.type === "dm" && memberIds.length !== 2) {
    return json(res, 400, failure("VALIDATION_ERROR", "a dm has exactly one other member"));
  }
  const dmKey = body.type === "dm" ? [...memberIds].sort().join("\u0000") : undefined;
  if (dmKey) {
    const existing = await state.dmChat(dmKey);
    if (existing) return json(res, 200, existing);
  }
  const at = now();
  const chat = { id: randomUUID(), type: body.type, title: body.title ?? null, memberIds, createdBy: user, createdAt: at, updatedAt: at };
  await state.saveChat(chat, dmKey);
  json(res, 201, chat);
}

server.on("request", (req, res) => {
  if (req.url.startsWith("/socket.io/")) return; // socket.io answers these
  if (req.method === "GET" && req.url === "/healthz") return json(res, 200, { ok: true });
  if (req.method === "POST" && req.url === "/v1/chats") {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        return json(res, 400, failure("VALIDATION_ERROR", "body must be JSON"));
      }
      createChat(req, res, body).catch((e) => json(res, 500, failure("INTERNAL", String(e))));
    });
    return;
  }
  json(res, 404, failure("NOT_FOUND", "no such route"));
});

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  const { user, reason } = token ? userOf(token) : { reason: "missing_token" };
  if (!user) {
    const err = new Error("UNAUTHORIZED");
    err.data = { code: "UNAUTHORIZED", reason };
    return next(err);
  }
  socket.data.user = user;
  next();
});

io.on("connection", async (socket) => {
  const user = socket.data.user;

  socket.on("room:join", async (p, ack) => {
    if (typeof ack !== "function") return;
    if (typeof p?.chatId !== "string") return ack(failure("VALIDATION_ERROR", "chatId must be a string"));
    const chat = await state.chat(p.chatId);
    if (!chat) return ack(failure("NOT_FOUND", "no such chat"));
    if (!chat.members.includes(user)) return ack(failure("FORBIDDEN", "not a member of this chat"));
    const since = Number.isInteger(p.sinceSeq) ? p.sinceSeq : undefined;
    const { missed, hasMore } = await state.missed(p.chatId, since);
    socket.join(p.chatId);
    ack({ ok: true, data: { chatId: p.chatId, lastSeq: chat.lastSeq, lastReadSeq: 0, missed, hasMore } });
  });

  socket.on("message:send", async (p, ack) => {
    if (typeof ack !== "function") return;
    const { chatId, body, clientId } = p ?? {};
    if (typeof chatId !== "string" || typeof body !== "string" || typeof clientId !== "string") {
      return ack(failure("VALIDATION_ERROR", "chatId, body and clientId must be strings"));
    }
    if (!body.trim() || [...body].length > 8000 || !clientId || [...clientId].length > 64) {
      return ack(failure("VALIDATION_ERROR", "body 1..8000 characters, clientId 1..64"));
    }
    const chat = await state.chat(chatId);
    if (!chat) return ack(failure("NOT_FOUND", "no such chat"));
    if (!chat.members.includes(user)) return ack(failure("FORBIDDEN", "not a member of this chat"));
    const sent = await state.send(chatId, user, body, clientId);
    ack({ ok: true, data: sent.data });
    if (!sent.duplicate) io.to(chatId).emit("message:new", sent.message);
  });

  const chats = await state.chatsOf(user);
  const listed = [];
  for (const id of chats) {
    socket.join(id);
    const c = await state.chat(id);
    listed.push({ chatId: id, lastSeq: c?.lastSeq ?? 0, lastReadSeq: 0, unread: 0 });
  }
  socket.emit("session:ready", { userId: user, sessionId: socket.id, serverTime: now(), chats: listed });
});

server.listen(PORT, HOST, () => console.log(`seed-node listening on http://${HOST}:${PORT}`));
