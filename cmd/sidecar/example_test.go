package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestJetStreamExampleRuns runs examples/jetstream.yaml against an
// embedded NATS server, with its addresses moved to free ports and its
// upstream down: a POST to /events is spooled in the stream.
func TestJetStreamExampleRuns(t *testing.T) {
	ns := startNATS(t)
	data, err := os.ReadFile("../../examples/jetstream.yaml")
	if err != nil {
		t.Fatal(err)
	}
	yaml := strings.NewReplacer(
		"nats://127.0.0.1:4222", ns.ClientURL(),
		"127.0.0.1:9001", "127.0.0.1:0",
		"127.0.0.1:9901", "127.0.0.1:0",
		"http://127.0.0.1:8080", "http://127.0.0.1:1",
	).Replace(string(data))
	_, s, _ := startBinary(t, writeConfig(t, yaml))
	addr := strings.TrimPrefix(s.Listeners, "app=")
	resp, err := http.Post("http://"+addr+"/events", "application/json", strings.NewReader(`{"order": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /events with the upstream down = %d, want 202", resp.StatusCode)
	}
	sresp, err := http.Get("http://" + s.Admin + "/v1/spool")
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	var got struct {
		Total struct {
			Depth int `json:"depth"`
		} `json:"total"`
	}
	if err := json.NewDecoder(sresp.Body).Decode(&got); err != nil || got.Total.Depth != 1 {
		t.Errorf("GET /v1/spool = %+v, %v; want a depth of 1", got, err)
	}
}
