# Build a static binary; the Go version matches go.mod.
FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so editing the code does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /pg2kafka .

# distroless/static has CA certificates and a nonroot user, and no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pg2kafka /pg2kafka
USER nonroot:nonroot
ENTRYPOINT ["/pg2kafka"]
