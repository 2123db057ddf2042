// A real OpenID Provider for the end-to-end tests: the `oidc-provider`
// package (a certified OpenID Connect implementation) on 127.0.0.1, serving
// discovery, JWKS, and JWT access tokens for the gateway's resource to two
// clients:
//
// * `warden-e2e`, confidential: the client credentials grant (a service);
// * `warden-cli`, public (no secret, RFC 8252 native app): what `warden
//   login` uses. The authorization code grant with PKCE and a loopback
//   redirect (any port on http://127.0.0.1/callback), the device
//   authorization grant (RFC 8628), rotating refresh tokens, and revocation
//   (RFC 7009). People sign in on oidc-provider's own development login and
//   consent pages (`devInteractions`: any password; the login names the
//   account), which a browser, and so a test, completes like any IdP's.
//
//   node server.mjs --port 9000 --keys keys.json [--access-token-ttl 600]
//
// keys.json holds private JWKs; the first one signs. Key rotation in a test
// is a restart with a new file ([new, old]): the issuer keeps its name, the
// JWKS changes. `node server.mjs --generate-key KID` prints a new private JWK.
// --access-token-ttl (seconds) makes access tokens short-lived, for the tests
// of refreshing.

import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import { parseArgs } from "node:util";

import Provider from "oidc-provider";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    keys: { type: "string" },
    "access-token-ttl": { type: "string", default: "600" },
    // HTTPS (a certificate for 127.0.0.1 and its key, PEM), as real IdPs serve.
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
    "generate-key": { type: "string" },
  },
});

if (values["generate-key"]) {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = privateKey.export({ format: "jwk" });
  process.stdout.write(JSON.stringify({ ...jwk, kid: values["generate-key"], alg: "RS256", use: "sig" }));
  process.exit(0);
}

const port = Number(values.port);
const accessTokenTTL = Number(values["access-token-ttl"]);
if (!Number.isInteger(accessTokenTTL) || accessTokenTTL < 1) {
  console.error(`--access-token-ttl must be a whole number of seconds, not ${values["access-token-ttl"]}`);
  process.exit(2);
}
const tls = values["tls-cert"] && values["tls-key"];
const issuer = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
const keys = JSON.parse(readFileSync(values.keys, "utf8"));

const SERVICE_CLIENT = { id: "warden-e2e", secret: "warden-e2e-client-secret-of-enough-length" };
const CLI_CLIENT_ID = "warden-cli";
const RESOURCE = "urn:warden:gateway";
// The groups a gateway policy keys on, as the company directory would give
// them: by account (the name typed on the login page), and the service's.
const ACCOUNT_GROUPS = { alice: ["engineering"], fiona: ["finance"], bob: ["security"] };
const SERVICE_GROUPS = ["engineering"];

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: SERVICE_CLIENT.id,
      client_secret: SERVICE_CLIENT.secret,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_post",
    },
    {
      client_id: CLI_CLIENT_ID,
      client_name: "Warden CLI",
      application_type: "native",
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
      response_types: ["code"],
      // RFC 8252 7.3: for a native client, any port on the loopback address matches.
      redirect_uris: ["http://127.0.0.1/callback"],
    },
  ],
  jwks: { keys },
  findAccount: (_ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
  }),
  claims: { openid: ["sub"], email: ["email", "email_verified"] },
  // Refresh tokens for the CLI whenever it may use them (offline_access or not).
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed("refresh_token"),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "llm",
        audience: "warden",
        accessTokenTTL,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) =>
    token.accountId
      ? { groups: ACCOUNT_GROUPS[token.accountId] ?? [], email: `${token.accountId}@example.com` }
      : { groups: SERVICE_GROUPS },
});

const server = tls
  ? createServer({ cert: readFileSync(values["tls-cert"]), key: readFileSync(values["tls-key"]) }, provider.callback())
  : provider;
server.listen(port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${issuer} with ${keys.length} key(s): ${keys.map((k) => k.kid).join(", ")}`);
});
