package outcometest_test

import (
	"testing"

	"github.com/realeyes/verifeye-bridge/outcome"
	"github.com/realeyes/verifeye-bridge/outcome/outcometest"
)

func TestMsgIsTheBridgesEncoding(t *testing.T) {
	const id = "3f2a9c1e-0000-4000-8000-000000000001"
	for _, tt := range []struct {
		ev          *outcome.Event
		subject     string
		notExecuted bool
	}{
		{outcometest.Passed("shop", id), "verifeye.result.shop.passed", false},
		{outcometest.Failed("default", id), "verifeye.result.default.failed", false},
		{outcometest.NotExecuted("kyc", id), "verifeye.result.kyc.passed", true},
	} {
		m, err := outcometest.Msg("", tt.ev)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != tt.subject || m.Header.Get(outcome.HeaderMsgID) != id || m.Header.Get(outcome.HeaderContentType) != outcome.ContentType {
			t.Errorf("Msg(%s) = subject %s, headers %v", tt.subject, m.Subject, m.Header)
		}
		ev, err := outcome.Decode(m.Data)
		if err != nil {
			t.Fatalf("Decode(Msg(%s)) = %v", tt.subject, err)
		}
		r, _ := ev.Result()
		age, ageOK := ev.Age()
		av, _ := ev.AgeVerification()
		if r != tt.ev.Outcome || ev.SessionID != id || ageOK == tt.notExecuted || (av == outcome.ResultNotExecuted) != tt.notExecuted {
			t.Errorf("Decode(Msg(%s)): result %q, age %v %v, age verification %q", tt.subject, r, age, ageOK, av)
		}
	}
}
