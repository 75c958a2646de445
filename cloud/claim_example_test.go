package cloud_test

import (
	"fmt"

	"github.com/sensible-iot/sensible/cloud"
)

// A label as a person typed it off the device, in lower case with
// hyphens, reads back as the printed one.
func ExampleParseClaimLabel() {
	id, code, err := cloud.ParseClaimLabel("snsbl1:8f5s-gt11-e0rd-77nc-h3se-bmdk-pgd:60rk-4csm-6mv3-ee1s-c5h6-6s35-cr")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(id)
	fmt.Println(code)
	fmt.Println(cloud.ClaimLabel(id, code))
	// Output:
	// 8F5SGT11E0RD77NCH3SEBMDKPGD
	// 60RK4CSM6MV3EE1SC5H66S35CR
	// SNSBL1:8F5SGT11E0RD77NCH3SEBMDKPGD:60RK4CSM6MV3EE1SC5H66S35CR
}
