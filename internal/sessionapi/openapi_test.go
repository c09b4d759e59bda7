package sessionapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/realeyes/verifeye-bridge/api"
	"github.com/realeyes/verifeye-bridge/internal/sessionapi"
	"github.com/realeyes/verifeye-bridge/outcome"
)

// TestOpenAPI holds api/openapi.yaml to the routes: the same paths and
// methods, and every answer of the real API to the requests below has a
// status the document lists for it, with a body its schema accepts.
func TestOpenAPI(t *testing.T) {
	var doc map[string]any
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Errorf("openapi.yaml: openapi %q, want 3.1.x", v)
	}
	paths, _ := doc["paths"].(map[string]any)
	documented := map[string][]string{}
	for p, item := range paths {
		for m := range item.(map[string]any) {
			if m != "parameters" {
				documented[p] = append(documented[p], strings.ToUpper(m))
			}
		}
		slices.Sort(documented[p])
	}
	routes := sessionapi.Routes()
	for p, ms := range routes {
		slices.Sort(ms)
		if !slices.Equal(documented[p], ms) {
			t.Errorf("openapi.yaml: %s has methods %v, the API %v", p, documented[p], ms)
		}
	}
	for p := range documented {
		if _, ok := routes[p]; !ok {
			t.Errorf("openapi.yaml documents %s, which the API does not serve", p)
		}
	}

	// The document as JSON, for its schemas.
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("openapi.json", inst); err != nil {
		t.Fatal(err)
	}
	schema := func(ptr string) *jsonschema.Schema {
		s, err := c.Compile("openapi.json#" + ptr)
		if err != nil {
			t.Fatalf("openapi.yaml: schema %s: %v", ptr, err)
		}
		return s
	}
	sessionSchema, errorSchema := schema("/components/schemas/Session"), schema("/components/schemas/Error")

	r := newRig(t)
	enriched := sid(7)
	r.put(enriched, outcome.StateEnriched)
	cases := []struct {
		method, path, tok, body string
		tmpl                    string
	}{
		{"GET", "/v1/sessions/" + enriched, token, "", "/v1/sessions/{id}"},
		{"GET", "/v1/sessions/" + enriched + "?wait=1s", token, "", "/v1/sessions/{id}"},
		{"GET", "/v1/sessions/" + sid(8), token, "", "/v1/sessions/{id}"},
		{"GET", "/v1/sessions/nope", token, "", "/v1/sessions/{id}"},
		{"GET", "/v1/sessions/" + enriched, "", "", "/v1/sessions/{id}"},
		{"DELETE", "/v1/sessions/" + enriched, token, "", "/v1/sessions/{id}"},
		{"PUT", "/v1/sessions/" + sid(9) + "/expect", token, `{"source":"acme"}`, "/v1/sessions/{id}/expect"},
		{"PUT", "/v1/sessions/" + sid(9) + "/expect", token, `{"source":"A B"}`, "/v1/sessions/{id}/expect"},
		{"PUT", "/v1/sessions/" + sid(9) + "/expect", token, strings.Repeat(" ", 5000), "/v1/sessions/{id}/expect"},
		{"PUT", "/v1/sessions/" + sid(9) + "/expect", "", "", "/v1/sessions/{id}/expect"},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, r.srv.URL+tc.path, strings.NewReader(tc.body))
		if tc.tok != "" {
			req.Header.Set("Authorization", "Bearer "+tc.tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		op := strings.ToLower(tc.method)
		if _, ok := paths[tc.tmpl].(map[string]any)[op]; !ok {
			op = map[string]string{"/v1/sessions/{id}": "get", "/v1/sessions/{id}/expect": "put"}[tc.tmpl] // a 405 is listed under the route's method
		}
		responses := paths[tc.tmpl].(map[string]any)[op].(map[string]any)["responses"].(map[string]any)
		code := strconv.Itoa(resp.StatusCode)
		if _, ok := responses[code]; !ok {
			t.Errorf("%s %s: %s, which openapi.yaml does not list", tc.method, tc.path, code)
			continue
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			t.Errorf("%s %s: body %q is not JSON", tc.method, tc.path, body)
			continue
		}
		s := errorSchema
		if resp.StatusCode == 200 {
			s = sessionSchema
		}
		if resp.StatusCode == 202 {
			continue
		}
		if err := s.Validate(v); err != nil {
			t.Errorf("%s %s: %d body %s does not match openapi.yaml: %v", tc.method, tc.path, resp.StatusCode, body, err)
		}
	}
}
