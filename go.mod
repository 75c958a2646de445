module github.com/sensible-iot/sensible

go 1.26.0

require (
	github.com/fxamacker/cbor/v2 v2.10.0
	github.com/golang-jwt/jwt/v5 v5.3.1
)

require github.com/x448/float16 v0.8.4 // indirect
