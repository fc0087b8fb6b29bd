// A small XML-RPC client for the farm's API: the same calls the command line makes, with the token as
// the Bearer. Values: numbers (int when whole, else double), strings, booleans, arrays, plain objects
// (structs) and Uint8Array (base64). Errors are RpcError with the farm's fault code (farm/faults.py).
"use strict";

const FAULT = {
  BAD_REQUEST: 2, BAD_ARGUMENT: 10, UNKNOWN_JOB: 20, JOB_NOT_DONE: 22, JOB_FINISHED: 23,
  UNAUTHORIZED: 32, FORBIDDEN: 33, UNREACHABLE: 50, REQUEST_TOO_LARGE: 14,
};

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function xmlEscape(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function base64ToBytes(text) {
  const raw = atob(text.replace(/\s+/g, ""));
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function encodeValue(value) {
  if (value instanceof Uint8Array) return `<value><base64>${bytesToBase64(value)}</base64></value>`;
  if (typeof value === "boolean") return `<value><boolean>${value ? 1 : 0}</boolean></value>`;
  if (typeof value === "number") {
    return Number.isInteger(value) ? `<value><int>${value}</int></value>` : `<value><double>${value}</double></value>`;
  }
  if (typeof value === "string") return `<value><string>${xmlEscape(value)}</string></value>`;
  if (Array.isArray(value)) return `<value><array><data>${value.map(encodeValue).join("")}</data></array></value>`;
  if (value && typeof value === "object") {
    const members = Object.entries(value).map(
      ([name, v]) => `<member><name>${xmlEscape(name)}</name>${encodeValue(v)}</member>`);
    return `<value><struct>${members.join("")}</struct></value>`;
  }
  throw new TypeError(`cannot send ${value} over XML-RPC`);
}

function encodeCall(method, params) {
  return `<?xml version="1.0"?><methodCall><methodName>${xmlEscape(method)}</methodName><params>`
    + params.map((p) => `<param>${encodeValue(p)}</param>`).join("") + "</params></methodCall>";
}

function firstElement(node) {
  for (let child = node.firstChild; child; child = child.nextSibling) {
    if (child.nodeType === 1) return child;
  }
  return null;
}

function elements(node) {
  const found = [];
  for (let child = node.firstChild; child; child = child.nextSibling) {
    if (child.nodeType === 1) found.push(child);
  }
  return found;
}

function decodeValue(valueNode) {
  const typed = firstElement(valueNode);
  if (!typed) return valueNode.textContent;          // no type element: a string
  const text = typed.textContent;
  switch (typed.tagName) {
    case "int": case "i4": case "i8": return parseInt(text, 10);
    case "double": return parseFloat(text);
    case "boolean": return text.trim() === "1";
    case "string": return text;
    case "nil": return null;
    case "dateTime.iso8601": return text;
    case "base64": return base64ToBytes(text);
    case "array": {
      const data = firstElement(typed);
      return data ? elements(data).map(decodeValue) : [];
    }
    case "struct": {
      const result = {};
      for (const member of elements(typed)) {
        let name = "", value;
        for (const part of elements(member)) {
          if (part.tagName === "name") name = part.textContent;
          else if (part.tagName === "value") value = decodeValue(part);
        }
        result[name] = value;
      }
      return result;
    }
    default: throw new RpcError(FAULT.BAD_REQUEST, `unknown XML-RPC type ${typed.tagName}`);
  }
}

function decodeResponse(text) {
  const doc = new DOMParser().parseFromString(text, "text/xml");
  if (doc.getElementsByTagName("parsererror").length) {
    throw new RpcError(FAULT.BAD_REQUEST, "the controller's reply is not valid XML");
  }
  const fault = doc.getElementsByTagName("fault")[0];
  if (fault) {
    const info = decodeValue(firstElement(fault));
    throw new RpcError(info.faultCode, info.faultString);
  }
  const value = doc.querySelector("methodResponse > params > param > value");
  if (!value) throw new RpcError(FAULT.BAD_REQUEST, "the controller's reply has no value");
  return decodeValue(value);
}

// A failed fetch or read: an abandoned call stays an AbortError, anything else means the link is down.
function unreachable(err, message) {
  return err.name === "AbortError" ? err : new RpcError(FAULT.UNREACHABLE, message);
}

// Throws for an HTTP refusal: 401 a refused token, 400 the fault the controller names, else the status.
async function refusal(response) {
  if (response.ok) return;
  if (response.status === 401) throw new RpcError(FAULT.UNAUTHORIZED, "the controller refused the token");
  if (response.status === 400 && response.headers.get("X-Povfarm-Fault")) {
    throw new RpcError(Number(response.headers.get("X-Povfarm-Fault")), (await response.text()).trim());
  }
  throw new RpcError(response.status >= 500 ? FAULT.UNREACHABLE : FAULT.BAD_REQUEST,
    `the controller answered HTTP ${response.status}`);
}

// One API endpoint (the page's own origin) and one token.
class RpcClient {
  constructor(token, url = "/RPC2") {
    this.token = token;
    this.url = url;
  }

  async call(method, ...params) {
    return this.callWith({}, method, ...params);
  }

  // options.signal: an AbortSignal that abandons the call.
  async callWith(options, method, ...params) {
    let response;
    try {
      response = await fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "text/xml", "Authorization": `Bearer ${this.token}` },
        body: encodeCall(method, params),
        cache: "no-store",
        signal: options.signal,
      });
    } catch (err) {
      throw unreachable(err, "cannot reach the controller");
    }
    if (response.status === 413) throw new RpcError(FAULT.REQUEST_TOO_LARGE, "the upload is over the controller's limit");
    await refusal(response);
    let text;
    try {
      text = await response.text();
    } catch (err) {
      throw unreachable(err, "the connection to the controller broke");
    }
    return decodeResponse(text);
  }
}

// The feed stream (GET /feed): records of a JSON header line and `size` bytes of payload, yielded as
// { header, payload } as they arrive. A controller without the stream answers 404: NoStream then.
class NoStream extends Error {}

async function* feedRecords(token, job, cursor, signal, live = false) {
  let response;
  try {
    response = await fetch(`/feed?job=${job}&cursor=${cursor}${live ? "&live=1" : ""}`, {
      headers: { "Authorization": `Bearer ${token}` }, cache: "no-store", signal,
    });
  } catch (err) {
    throw unreachable(err, "cannot reach the controller");
  }
  if (response.status === 404) throw new NoStream("the controller has no feed stream");
  await refusal(response);
  const reader = response.body.getReader();
  const text = new TextDecoder();
  let buffer = new Uint8Array(0);
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      throw unreachable(err, "the connection to the controller broke");
    }
    if (chunk.done) return;
    if (buffer.length) {                   // the start of a record the last read cut off, and the rest
      const joined = new Uint8Array(buffer.length + chunk.value.length);
      joined.set(buffer);
      joined.set(chunk.value, buffer.length);
      buffer = joined;
    } else {
      buffer = chunk.value;
    }
    const records = [];
    let used = 0;
    for (;;) {
      const newline = buffer.indexOf(10, used);
      if (newline < 0) break;
      const header = JSON.parse(text.decode(buffer.subarray(used, newline)));
      const end = newline + 1 + (header.size || 0);
      if (buffer.length < end) break;
      // Views, not copies: one read holds hundreds of pieces, and a copy of the rest after each would
      // make a read cost its size times its records.
      records.push({ header, payload: buffer.subarray(newline + 1, end) });
      used = end;
    }
    buffer = buffer.subarray(used);
    if (records.length) yield records;     // what one read brought, together
  }
}

// Inflate zlib data (what nodes send and the feed relays) with the browser's own decompressor.
async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

window.povrpc = { RpcClient, RpcError, FAULT, NoStream, feedRecords, inflate, bytesToBase64, base64ToBytes };
