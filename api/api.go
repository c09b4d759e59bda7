// Package api holds the machine-readable contract of verifeye-bridge: the JSON
// Schema of the outcome CloudEvent, the AsyncAPI 3.0 description of every
// subject, stream, header and message, and the OpenAPI 3.1 description of the
// internal API. The files beside this one are the
// source; the variables embed them for programs that serve or check them.
package api

import _ "embed"

// OutcomeSchema is outcome.schema.json: the JSON Schema (2020-12) of the
// outcome CloudEvent.
//
//go:embed outcome.schema.json
var OutcomeSchema []byte

// AsyncAPI is asyncapi.yaml: the AsyncAPI 3.0 document of the NATS contract.
//
//go:embed asyncapi.yaml
var AsyncAPI []byte

// OpenAPI is openapi.yaml: the OpenAPI 3.1 document of the internal API
// (API_ADDR).
//
//go:embed openapi.yaml
var OpenAPI []byte
