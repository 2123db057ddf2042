// A real OpenID Provider for the end-to-end tests: the `oidc-provider`
// package (a certified OpenID Connect implementation), serving discovery,
// JWKS and JWT access tokens (client credentials grant) on 127.0.0.1.
//
//   node server.mjs --port 9000 --keys keys.json
//
// keys.json holds private JWKs; the first one signs. Key rotation in a test
// is a restart with a new file ([new, old]): the issuer keeps its name, the
// JWKS changes. `node server.mjs --generate-key KID` prints a new private JWK.

import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import Provider from "oidc-provider";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    keys: { type: "string" },
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
const issuer = `http://127.0.0.1:${port}`;
const keys = JSON.parse(readFileSync(values.keys, "utf8"));

const CLIENT = { id: "warden-e2e", secret: "warden-e2e-client-secret-of-enough-length" };
const RESOURCE = "urn:warden:gateway";

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT.id,
      client_secret: CLIENT.secret,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "llm",
        audience: "warden",
        accessTokenTTL: 600,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  // The groups a gateway policy keys on, as an IdP would add them.
  extraTokenClaims: () => ({ groups: ["engineering"] }),
});

provider.listen(port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${issuer} with ${keys.length} key(s): ${keys.map((k) => k.kid).join(", ")}`);
});
