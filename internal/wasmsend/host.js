// host.js runs wasmsend built with GOOS=js GOARCH=wasm under Node.js, as a
// JavaScript host would: it opens the socket to the mail server itself and
// hands it to the Go program as globalThis.smtpkitSocket.
//
//   node host.js WASM_EXEC_JS PROGRAM.wasm HOST:PORT [program flags...]
//
// WASM_EXEC_JS is Go's $(go env GOROOT)/lib/wasm/wasm_exec.js. The setup
// of the globals follows Go's own wasm_exec_node.js.
"use strict";

const fs = require("fs");
const net = require("net");

if (process.argv.length < 5) {
	console.error("usage: node host.js WASM_EXEC_JS PROGRAM.wasm HOST:PORT [flags...]");
	process.exit(2);
}
const [wasmExec, program, addr, ...flags] = process.argv.slice(2);

globalThis.require = require;
globalThis.fs = fs;
globalThis.path = require("path");
globalThis.TextEncoder = require("util").TextEncoder;
globalThis.TextDecoder = require("util").TextDecoder;
globalThis.performance ??= require("perf_hooks").performance;
globalThis.crypto ??= require("crypto");
require(wasmExec);

const i = addr.lastIndexOf(":");
const host = addr.slice(0, i).replace(/^\[|\]$/g, "");
const port = Number(addr.slice(i + 1));

async function main() {
	const startup = flags.includes("-startup");
	if (!startup) {
		const sock = net.connect({ host, port });
		await new Promise((resolve, reject) => {
			sock.once("connect", resolve);
			sock.once("error", reject);
		});
		globalThis.smtpkitSocket = sock;
	}
	const go = new Go();
	go.argv = [program, "-addr", addr, ...flags];
	go.env = Object.assign({ TMPDIR: require("os").tmpdir() }, process.env);
	go.exit = process.exit;
	const { instance } = await WebAssembly.instantiate(fs.readFileSync(program), go.importObject);
	await go.run(instance);
}

main().catch((err) => {
	console.error("host.js:", err);
	process.exit(1);
});
