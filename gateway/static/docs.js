"use strict";
// /docs: Swagger UI over this service's own /openapi.json. "Try it out" sends real requests, with the
// API key typed under "Authorize" when keys are configured.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  tryItOutEnabled: false,
});
