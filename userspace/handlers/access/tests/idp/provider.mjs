// A real OpenID provider for the access tests: node-oidc-provider (OpenID-certified) over HTTPS,
// with its development login form (any login, no password check) and test switches for faults.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: { host (default 127.0.0.1), port, cert, key, issuer, kid, clients: [{ client_id, client_secret, redirect_uris }] }
// Prints "READY <port>" once listening.
//
// Accounts: the login typed in the form is the subject. A login with an "@" is also the email;
// logins starting with "unverified" get email_verified = false; logins without "@" have no email.
//
// Faults, set with GET /_test/fault?...:
//   token_delay_ms=N     the token endpoint answers N ms late
//   token_error=CODE     the token endpoint answers 400 {"error": CODE}
//   clear=1              no faults
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

// This run's signing key; a restart with another kid is a key rotation at the provider.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: cfg.kid, alg: 'RS256', use: 'sig' };

const faults = { token_delay_ms: 0, token_error: null };

function claimsOf(id) {
  const c = { sub: id };
  if (id.includes('@')) {
    c.email = id;
    c.email_verified = !id.startsWith('unverified');
  }
  return c;
}

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients.map((c) => ({
    ...c,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: ['outpost-access-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return claimsOf(id); } };
  },
  // A first-party client: no consent screen, the grant is implied.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const g = await ctx.oidc.provider.Grant.find(grantId);
      if (g) return g;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    grant.addOIDCClaims(['email', 'email_verified']);
    await grant.save();
    return grant;
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const callback = provider.callback();
const server = https.createServer(
  { cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) },
  (req, res) => {
    const url = new URL(req.url, cfg.issuer);
    if (url.pathname === '/_test/fault') {
      if (url.searchParams.get('clear')) {
        faults.token_delay_ms = 0;
        faults.token_error = null;
      }
      if (url.searchParams.has('token_delay_ms')) {
        faults.token_delay_ms = Number(url.searchParams.get('token_delay_ms'));
      }
      if (url.searchParams.has('token_error')) faults.token_error = url.searchParams.get('token_error');
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(faults));
      return;
    }
    if (url.pathname === '/token') {
      if (faults.token_error) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: faults.token_error, error_description: 'test fault' }));
        return;
      }
      if (faults.token_delay_ms > 0) {
        setTimeout(() => callback(req, res), faults.token_delay_ms);
        return;
      }
    }
    callback(req, res);
  },
);
server.listen(cfg.port, cfg.host ?? '127.0.0.1', () => {
  console.log(`READY ${cfg.port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
