// pool.js drives nodemailer's SMTP pool for go run ./bench.
//
// It is started by the benchmark with one argument, a JSON object that
// configures the transport:
//
//   {"host", "port", "secure", "user", "pass", "caFile",
//    "maxConnections", "maxMessages", "from", "to", "text"}
//
// and then reads one JSON command per line on stdin, answering each with
// one JSON line on stdout:
//
//   {"op": "saturate", "callers": N, "ms": D}
//       N callers each send one message after another for D ms (after a
//       warm-up of warmMs, and until N messages have been sent); answers
//       {"sent", "failed", "ms", "firstError"}.
//   {"op": "open", "rate": R, "ms": D, "timeoutMs": T, "seed": S}
//       messages arrive at R per second with exponential gaps for D ms,
//       each sent at once whatever the earlier ones are doing; answers
//       {"lat": [microseconds from the scheduled arrival to the answer],
//       "failed", "firstError", "maxLateUs" (the most an arrival started
//       after its time)}. A failed send counts in failed, not in
//       lat.
//
// Closing stdin closes the pool and ends the process. Nothing here is
// tuned beyond what a Node service would configure.
'use strict';

const fs = require('fs');
const readline = require('readline');

let nodemailer;
try {
    nodemailer = require('nodemailer');
} catch (e) {
    process.stdout.write(JSON.stringify({ error: 'nodemailer is not installed: run npm ci in bench/nodemailer' }) + '\n');
    process.exit(3);
}

const cfg = JSON.parse(process.argv[2]);
const opts = {
    pool: true,
    host: cfg.host,
    port: cfg.port,
    secure: cfg.secure,
    maxConnections: cfg.maxConnections,
    maxMessages: cfg.maxMessages,
    name: 'localhost'
};
if (cfg.secure) {
    opts.tls = { ca: fs.readFileSync(cfg.caFile) };
    opts.auth = { user: cfg.user, pass: cfg.pass };
} else {
    opts.ignoreTLS = true;
}
const transport = nodemailer.createTransport(opts);
const mail = { from: cfg.from, to: cfg.to, subject: 'smtpkit benchmark message', text: cfg.text };

function now() {
    return Number(process.hrtime.bigint() / 1000n); // microseconds
}

function send(timeoutMs) {
    const p = transport.sendMail(mail);
    if (!timeoutMs) {
        return p;
    }
    let timer;
    const t = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
    });
    return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function saturate(cmd) {
    let sent = 0;
    let failed = 0;
    let firstError = '';
    let measuring = false;
    let stop = false;
    let warmed = 0;
    const loop = async () => {
        while (!stop) {
            try {
                await send(0);
                if (measuring) sent++;
                else warmed++;
            } catch (e) {
                if (measuring) failed++;
                if (!firstError) firstError = String(e && e.message);
            }
        }
    };
    const loops = [];
    for (let i = 0; i < cmd.callers; i++) loops.push(loop());
    // Warm up for warmMs, and until the pool's connections are up (as
    // many messages as callers have been sent), 30 s at most.
    const warmEnd = now() + 30e6;
    await new Promise((r) => setTimeout(r, cmd.warmMs || 200));
    while (warmed < cmd.callers && now() < warmEnd) {
        await new Promise((r) => setTimeout(r, 10));
    }
    measuring = true;
    const t0 = now();
    await new Promise((r) => setTimeout(r, cmd.ms));
    measuring = false;
    const ms = (now() - t0) / 1000;
    stop = true;
    await Promise.all(loops);
    return { sent, failed, ms, firstError };
}

// A small seeded generator, so runs are repeatable.
function rng(seed) {
    let s = (seed >>> 0) || 1;
    return () => {
        s ^= s << 13;
        s >>>= 0;
        s ^= s >>> 17;
        s ^= s << 5;
        s >>>= 0;
        return (s + 0.5) / 4294967296;
    };
}

async function open(cmd) {
    const rand = rng(cmd.seed);
    const lat = [];
    let failed = 0;
    let firstError = '';
    let maxLateUs = 0;
    const pending = [];
    const start = now();
    const end = start + cmd.ms * 1000;
    let next = start;
    await new Promise((done) => {
        const tick = () => {
            const t = now();
            while (next <= t && next < end) {
                const due = next;
                maxLateUs = Math.max(maxLateUs, t - due);
                pending.push(send(cmd.timeoutMs).then(
                    () => { lat.push(now() - due); },
                    (e) => { failed++; if (!firstError) firstError = String(e && e.message); }
                ));
                next += -Math.log(rand()) * 1e6 / cmd.rate;
            }
            if (next >= end) {
                done();
                return;
            }
            setTimeout(tick, Math.max(0, (next - now()) / 1000));
        };
        tick();
    });
    await Promise.all(pending);
    return { lat, failed, firstError, maxLateUs };
}

const rl = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
async function drain() {
    if (busy) return;
    busy = true;
    while (queue.length) {
        const cmd = queue.shift();
        let out;
        try {
            out = cmd.op === 'saturate' ? await saturate(cmd) : await open(cmd);
        } catch (e) {
            out = { error: String(e && e.message) };
        }
        process.stdout.write(JSON.stringify(out) + '\n');
    }
    busy = false;
}
rl.on('line', (line) => {
    if (line.trim()) {
        queue.push(JSON.parse(line));
        drain();
    }
});
rl.on('close', async () => {
    while (busy || queue.length) await new Promise((r) => setTimeout(r, 10));
    transport.close();
    process.exit(0);
});
