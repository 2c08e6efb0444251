// Mints the session tokens of tokens.json with the npm packages jose and
// jsonwebtoken, as a backend signing with the gateway's secret would:
//
//	npm install --prefix /tmp/mint jose@5 jsonwebtoken@9
//	NODE_PATH=/tmp/mint/node_modules node mint.mjs > tokens.json
//
// (run from this directory; the versions used are recorded in the output).
// Fixed secret, claims and a far-future exp, so that the tokens stay valid.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.NODE_PATH, 'x.js'));
const jose = require('jose');
const jsonwebtoken = require('jsonwebtoken');
const version = (name) => require(`${name}/package.json`).version;

const secret = 'a-session-secret-of-at-least-32-bytes';
const claims = { sub: 'oMintedByNpm', appid: 'wx1234567890abcdef', iat: 1700000000, exp: 4102444800 };
const key = new TextEncoder().encode(secret);

const sign = (header) => new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
const compact = (header) => new jose.CompactSign(new TextEncoder().encode(JSON.stringify(claims))).setProtectedHeader(header).sign(key);
const tokens = [
	// jose's default: no typ.
	{ library: `jose ${version('jose')}`, header: 'alg only', accept: true, token: await sign({ alg: 'HS256' }) },
	{ library: `jose ${version('jose')}`, header: 'typ first', accept: true, token: await sign({ typ: 'JWT', alg: 'HS256' }) },
	{ library: `jose ${version('jose')}`, header: 'kid', accept: true, token: await sign({ alg: 'HS256', kid: 'key-2026' }) },
	{ library: `jose ${version('jose')}`, header: 'crit b64 true', accept: false, token: await compact({ alg: 'HS256', b64: true, crit: ['b64'] }) },
	{ library: `jose ${version('jose')}`, header: 'crit b64 false', accept: false, token: await compact({ alg: 'HS256', b64: false, crit: ['b64'] }) },
	{ library: `jose ${version('jose')}`, header: 'HS512', accept: false, token: await new jose.SignJWT(claims).setProtectedHeader({ alg: 'HS512' }).sign(key) },
	// jsonwebtoken's default: {"alg":"HS256","typ":"JWT"}.
	{ library: `jsonwebtoken ${version('jsonwebtoken')}`, header: 'default', accept: true, token: jsonwebtoken.sign(claims, secret) },
	{ library: `jsonwebtoken ${version('jsonwebtoken')}`, header: 'kid', accept: true, token: jsonwebtoken.sign(claims, secret, { keyid: 'key-2026' }) },
	{ library: `jsonwebtoken ${version('jsonwebtoken')}`, header: 'jku', accept: false, token: jsonwebtoken.sign(claims, secret, { header: { alg: 'HS256', jku: 'https://attacker.example/keys' } }) },
	{ library: `jsonwebtoken ${version('jsonwebtoken')}`, header: 'none', accept: false, token: jsonwebtoken.sign(claims, null, { algorithm: 'none' }) },
	{ library: `jsonwebtoken ${version('jsonwebtoken')}`, header: 'HS384', accept: false, token: jsonwebtoken.sign(claims, secret, { algorithm: 'HS384' }) },
];
process.stdout.write(JSON.stringify({ secret, appid: claims.appid, sub: claims.sub, tokens }, null, '\t') + '\n');
