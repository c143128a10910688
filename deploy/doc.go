// Package deploy holds pg2kafka's deployment examples: kubernetes.yaml,
// docker-compose.yml and grafana-dashboard.json. It has no code; its test
// checks that the examples parse, agree with each other and with
// pg2kafka's settings, and that the dashboard asks for metrics pg2kafka
// serves.
package deploy
