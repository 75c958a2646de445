package cloud

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/device/identity"
)

// The app API (docs/app-api.md): the routes under /v1/app/, which owners'
// apps call with app tokens, and the operator's release route. They are
// served by the operator API's server (httpapi.go), with its limits, its
// errors and its request log.

// authenticateApp checks the request's app token, answers 401 or 429 when
// it does not pass, and keeps its subject as the request's caller.
func (a *httpAPI) authenticateApp(w http.ResponseWriter, r *http.Request) bool {
	var subject string
	if !a.checkToken(w, r, "an app token", func(token string) (refusal, failure error) {
		subject, failure = a.app.verify(r.Context(), token)
		var bad *appTokenError
		if errors.As(failure, &bad) {
			return bad, nil
		}
		return nil, failure
	}) {
		return false
	}
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		info.subject = subject
	}
	return true
}

// caller returns the subject of the request's app token.
func caller(r *http.Request) (string, error) {
	info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo)
	if !ok || info.subject == "" {
		return "", errors.New("cloud: an app route without an authenticated caller")
	}
	return info.subject, nil
}

// claimCodeJSON is a claim code as it is made, with its label: shown
// once.
type claimCodeJSON struct {
	Device  string    `json:"device"`
	Code    string    `json:"code"`
	Label   string    `json:"label"`
	Created time.Time `json:"created"`
}

func newClaimCodeJSON(c store.Claim, code string) claimCodeJSON {
	return claimCodeJSON{Device: c.Device.String(), Code: code, Label: ClaimLabel(c.Device, code), Created: c.Created.UTC()}
}

// ownerJSON says who owns a device.
type ownerJSON struct {
	Device string `json:"device"`
	Owner  string `json:"owner"`
}

// claimError answers the refusals of claims and transfers.
func claimError(w http.ResponseWriter, err error) error {
	var limited *ClaimLimitError
	switch {
	case errors.As(err, &limited):
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(limited.Window)))
		return &apiError{http.StatusTooManyRequests, "claim_limited", err.Error()}
	case errors.Is(err, ErrBadClaim):
		return &apiError{http.StatusForbidden, "bad_claim", "wrong claim code, or no such device"}
	case errors.Is(err, ErrNotOwner):
		return &apiError{http.StatusForbidden, "not_owner", "you do not own the device, or there is no such device"}
	}
	return err
}

// appClaim claims a device for the caller with its label, or its ID and
// code.
func (a *httpAPI) appClaim(w http.ResponseWriter, r *http.Request) error {
	claimant, err := caller(r)
	if err != nil {
		return err
	}
	var req struct {
		Label  string `json:"label"`
		Device string `json:"device"`
		Code   string `json:"code"`
	}
	if err := decode(r, &req); err != nil {
		return err
	}
	var id identity.ID
	var code string
	switch {
	case req.Label != "" && req.Device == "" && req.Code == "":
		if id, code, err = ParseClaimLabel(req.Label); err != nil {
			return badRequest("label: %v", err)
		}
	case req.Label == "" && req.Device != "" && req.Code != "":
		if id, err = identity.ParseID(req.Device); err != nil {
			return badRequest("bad device ID: %v", err)
		}
		if code, err = parseClaimCode(req.Code); err != nil {
			return badRequest("code: %v", err)
		}
	default:
		return badRequest("give either label, or device and code")
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "claim_device", func() error { return a.n.ClaimDevice(ctx, claimant, id, code) }); err != nil {
		return claimError(w, err)
	}
	writeJSON(w, http.StatusOK, ownerJSON{Device: id.String(), Owner: claimant})
	return nil
}

// appTransfer releases a device the caller owns and returns a new claim
// code for the next owner.
func (a *httpAPI) appTransfer(w http.ResponseWriter, r *http.Request) error {
	from, err := caller(r)
	if err != nil {
		return err
	}
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var code string
	c, err := storeCall(a.n.metrics, "transfer_device", func() (c store.Claim, err error) {
		c, code, err = a.n.transfer(ctx, id, from)
		return c, err
	})
	if err != nil {
		return claimError(w, err)
	}
	writeJSON(w, http.StatusOK, newClaimCodeJSON(c, code))
	return nil
}

// releaseDevice is the operator's release of a device from its owner.
func (a *httpAPI) releaseDevice(w http.ResponseWriter, r *http.Request) error {
	id, err := deviceParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if err := storeDo(a.n.metrics, "release_device", func() error { return a.n.ReleaseDevice(ctx, id) }); err != nil {
		return err
	}
	d, err := a.device(ctx, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newDeviceJSON(d))
	return nil
}
