module github.com/sidecar-proxy/sidecar

go 1.26.0

require (
	github.com/sony/gobreaker/v2 v2.4.0
	golang.org/x/time v0.16.0
	gopkg.in/yaml.v3 v3.0.1
)
