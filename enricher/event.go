package enricher

import (
	"encoding/json"
	"fmt"
	"time"
)

// CloudEvents attributes of an outcome.
const (
	EventType        = "ai.realeyes.verifeye.verification.completed"
	EventContentType = "application/cloudevents+json"
)

// envelope is the outcome's CloudEvents 1.0 structured-mode JSON, without data.
type envelope struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Type            string `json:"type"`
	Source          string `json:"source"`
	Subject         string `json:"subject"`
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	// Extension attributes (lower-case alphanumerics, per the spec) so consumers
	// can route without parsing data.
	VerifeyeSource  string `json:"verifeyesource"`
	VerifeyeOutcome string `json:"verifeyeoutcome"`
}

// EventSource returns the CloudEvents source of outcomes of a webhook source.
func EventSource(source string) string { return "verifeye-bridge/" + source }

// Outcome is an enriched result as published on the results stream.
type Outcome struct {
	// ID is the CloudEvent id; empty means SessionID. A replayed outcome has
	// its own (streams.ReplayOutcomeID), so consumers see a new event.
	ID         string
	SessionID  string
	Source     string
	Outcome    string
	ReceivedAt time.Time
	// Data is the Get Session Result body, exactly as the API returned it; it
	// must be valid JSON.
	Data []byte
}

// MarshalEvent returns the CloudEvent of o. data is spliced in byte for byte:
// json.Marshal would compact a json.RawMessage, changing the API's bytes.
func MarshalEvent(o Outcome) ([]byte, error) {
	if !json.Valid(o.Data) {
		return nil, fmt.Errorf("enricher: outcome data is not valid JSON")
	}
	id := o.ID
	if id == "" {
		id = o.SessionID
	}
	head, err := json.Marshal(envelope{
		SpecVersion:     "1.0",
		ID:              id,
		Type:            EventType,
		Source:          EventSource(o.Source),
		Subject:         o.SessionID,
		Time:            o.ReceivedAt.UTC().Format(time.RFC3339Nano),
		DataContentType: "application/json",
		VerifeyeSource:  o.Source,
		VerifeyeOutcome: o.Outcome,
	})
	if err != nil {
		return nil, fmt.Errorf("enricher: marshal event: %w", err)
	}
	out := make([]byte, 0, len(head)+len(o.Data)+9)
	out = append(out, head[:len(head)-1]...)
	out = append(out, `,"data":`...)
	out = append(out, o.Data...)
	out = append(out, '}')
	return out, nil
}
