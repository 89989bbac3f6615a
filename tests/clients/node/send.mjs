// Sends one message with nodemailer as an application does, for
// tests/integration/test_clients_nodemailer.py. The settings come as JSON on
// stdin; the outcome goes to stdout as one JSON line (exit 0 sent, 1 not).
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import nodemailer from 'nodemailer';

const s = JSON.parse(readFileSync(0, 'utf-8'));
const auth = s.accessToken
    ? { type: 'OAuth2', user: s.user, accessToken: s.accessToken }
    : { type: 'login', user: s.user, pass: s.pass };
const transport = nodemailer.createTransport({
    host: 'localhost',
    port: s.port,
    secure: s.secure,
    requireTLS: s.requireTLS,
    name: 'client.test',
    tls: { ca: [readFileSync(s.ca)] },
    auth,
    ...(s.authMethod ? { authMethod: s.authMethod } : {}),
});

try {
    const info = await transport.sendMail({
        from: s.user,
        to: 'bob@example.net',
        subject: s.subject,
        text: s.text,
        attachments: [
            ...(s.attachment ? [{ filename: basename(s.attachment), path: s.attachment }] : []),
            // ASCII lines sent as they are, so that only SMTP's dot-stuffing carries them.
            ...(s.dots ? [{ filename: s.dotsName, content: s.dots, contentType: 'text/plain',
                            contentTransferEncoding: '7bit' }] : []),
        ],
    });
    console.log(JSON.stringify({ ok: true, response: info.response, accepted: info.accepted }));
} catch (err) {
    console.log(JSON.stringify({
        ok: false, code: err.code, responseCode: err.responseCode, command: err.command,
        response: err.response, message: err.message,
    }));
    process.exitCode = 1;
} finally {
    transport.close();
}
